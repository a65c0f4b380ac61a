//! Container ids for libcontainer, derived from task and container names.
//!
//! A [`Name`] is `[A-Za-z0-9_.-]`; libcontainer ids may also contain `+`. Joining the two names
//! with `+` is therefore unambiguous and reversible, and the id is a valid libcontainer id.

use skiff_proto::Name;

/// Separator between task and container in a container id: allowed by libcontainer, never in a
/// [`Name`].
const SEP: char = '+';

/// The libcontainer id of `container` in `task`: `{task}+{container}`.
pub fn container_id(task: &Name, container: &Name) -> String {
    format!("{task}{SEP}{container}")
}

/// The task and container of an id made by [`container_id`]; `None` for anything else.
pub fn parse_container_id(id: &str) -> Option<(Name, Name)> {
    let (task, container) = id.split_once(SEP)?;
    Some((task.parse().ok()?, container.parse().ok()?))
}

/// The prefix every container id of `task` starts with.
pub(crate) fn task_prefix(task: &Name) -> String {
    format!("{task}{SEP}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    fn n(s: &str) -> Name {
        s.parse().expect("valid name")
    }

    #[test]
    fn round_trip() {
        for (t, c) in [("web", "nginx"), ("a.b-c_d", "x"), ("t", "c.d"), ("9", "_")] {
            let id = container_id(&n(t), &n(c));
            assert_eq!(parse_container_id(&id), Some((n(t), n(c))), "{id}");
        }
    }

    #[test]
    fn not_ours() {
        for id in ["", "web", "+x", "x+", "a+b+c", "a/b", "..+x", "-a+b"] {
            assert_eq!(parse_container_id(id), None, "{id}");
        }
    }

    #[test]
    fn distinct_pairs_give_distinct_ids() {
        // The classic ambiguity of a separator that may occur in names.
        let a = container_id(&n("a-b"), &n("c"));
        let b = container_id(&n("a"), &n("b-c"));
        assert_ne!(a, b);
    }

    #[test]
    fn libcontainer_accepts_ids() {
        let longest = "x".repeat(64);
        for (t, c) in [("web", "nginx"), ("A.b_c-9", "d"), (&*longest, &*longest)] {
            let id = container_id(&n(t), &n(c));
            ContainerBuilder::new(id.clone(), SyscallType::default())
                .validate_id()
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn prefix_matches_only_the_task() {
        let id = container_id(&n("web"), &n("c"));
        assert!(id.starts_with(&task_prefix(&n("web"))));
        assert!(!id.starts_with(&task_prefix(&n("we"))));
    }
}
