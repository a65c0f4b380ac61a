//! ECS task-definition JSON (placeholder, being written).
