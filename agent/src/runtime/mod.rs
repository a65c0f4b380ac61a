//! Containers through libcontainer (placeholder, being written).
