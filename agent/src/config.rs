//! Agent configuration (placeholder, being written).
