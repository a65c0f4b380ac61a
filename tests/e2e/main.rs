//! End-to-end tests: the real `skiff` binary against a real mosquitto, running real containers
//! through libcontainer on the busybox image built from Debian's busybox-static. Observed both
//! through `skiff ctl` and through `mosquitto_sub` as an independent client.
//!
//! Needs root, `mosquitto`, `mosquitto-clients` and `busybox-static` (`tests/run.sh` installs
//! them). Without them each test prints SKIPPED, unless SKIFF_E2E_REQUIRED is set (CI).

mod fleet;
mod harness;
mod images;
mod mirror;
mod networking;
mod offline;
mod policy;
mod queue;
mod secrets;
mod services;
mod ship;
mod sim;
mod skeleton;
mod tls;
mod trust;
