//! Log lines for journald: under systemd (`$JOURNAL_STREAM` set) stderr is a journal stream, which
//! reads a `<N>` syslog-priority prefix on each line as the entry's priority. So `journalctl -p
//! warning -u skiff` finds the agent's warnings, and errors show in red, without timestamps
//! (journald stamps entries itself) and without ANSI colours.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A log filter in `RUST_LOG`'s directive syntax: comma-separated `level` (the default) and
/// `target=level` (that target and the modules under it), e.g. `info,skiff_agent::mqtt=debug`.
/// Span and field filters (`target[span{field=value}]=level`) are not taken: their matcher
/// would bring a regex DFA builder into the binary for a debugging aid (issue 7: binary size).
pub fn log_filter(directives: &str) -> Result<Targets, String> {
    directives.parse::<Targets>().map_err(|e| e.to_string())
}

/// The syslog priority journald files a `level` event under (`sd-daemon.h`'s `SD_ERR`...).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Wraps an event format, prefixing each event with its `<priority>`.
#[derive(Debug)]
pub struct Priority<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn every_level_gets_its_syslog_priority_and_no_time_or_colour() {
        let buf = Buf::default();
        let fmt = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false)
            .with_target(false);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(buf.clone())
            .with_ansi(false)
            .event_format(Priority(fmt))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("e");
            tracing::warn!(task = "web", "w");
            tracing::info!("i");
            tracing::debug!("d");
        });
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "<3>ERROR e",
                "<4> WARN w task=\"web\"",
                "<6> INFO i",
                "<7>DEBUG d"
            ]
        );
    }

    #[test]
    fn log_filter_takes_levels_per_target_and_names_what_is_wrong() {
        use tracing_subscriber::layer::SubscriberExt;
        let filter = log_filter("warn,skiff_agent::mqtt=debug").expect("valid");
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(buf.clone())
            .with_ansi(false)
            .without_time()
            .finish()
            .with(filter);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "skiff_agent::mqtt::conn", "mqtt debug");
            tracing::info!(target: "skiff_agent::core", "core info");
            tracing::warn!(target: "libcontainer", "other warn");
        });
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(out.contains("mqtt debug"), "{out}");
        assert!(!out.contains("core info"), "{out}");
        assert!(out.contains("other warn"), "{out}");
        let e = log_filter("skiff_agent=loud").expect_err("not a level");
        assert!(!e.is_empty());
    }
}
