//! Mutual TLS to a real mosquitto (docs/broker-tls.md): a CA, broker and client certificates
//! made with openssl, a listener with `require_certificate`, `use_identity_as_username` and a
//! per-node ACL. The agent takes its node id from its certificate's CN; a console identity
//! applies a task; other CAs, missing certificates and other nodes' identities are refused.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_proto::codec::Message;
use skiff_proto::{EventBody, NodeState};

use crate::harness::{tool_missing, wait_for, Agent, Broker, ClientTls, Sub};
use crate::require_env;

const T: Duration = Duration::from_secs(30);
const CLUSTER: &str = "e2e-tls";

/// Runs openssl with `args` split at spaces.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `{name}.pem`, `{name}.key`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
             -subj /CN={name} -keyout {name}.key -out {name}.pem"
        ),
    );
}

/// A certificate `{name}.pem` + `{name}.key` with subject CN `cn`, signed by CA `ca`.
fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, server: bool) {
    let ext = if server {
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    } else {
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
    openssl(
        dir,
        &format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -subj /O=skiff-e2e/CN={cn} -keyout {name}.key -out {name}.csr"
        ),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -days 2 \
             -extfile {name}.ext -out {name}.pem"
        ),
    );
}

fn identity(dir: &Path, ca: &str, name: &str) -> ClientTls {
    ClientTls {
        ca: dir.join(format!("{ca}.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

fn agent_tls(t: &ClientTls) -> String {
    format!(
        "[broker_tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        t.ca.display(),
        t.cert.display(),
        t.key.display()
    )
}

/// The PKI and a TLS broker with the ACL of docs/broker-tls.md (for one cluster).
fn tls_broker(pki: &Path) -> Broker {
    make_ca(pki, "ca");
    make_ca(pki, "rogue-ca");
    make_cert(pki, "ca", "broker", "localhost", true);
    make_cert(pki, "ca", "node1", "tls-pi-1", false);
    make_cert(pki, "ca", "node2", "tls-pi-2", false);
    make_cert(pki, "ca", "console", "console", false);
    // Claims to be node 1, from a CA the broker does not trust.
    make_cert(pki, "rogue-ca", "rogue", "tls-pi-1", false);
    let acl = pki.join("acl");
    std::fs::write(
        &acl,
        format!(
            "pattern read skiff/v1/{CLUSTER}/desired\n\
             pattern read skiff/v1/{CLUSTER}/nodes/%u/desired\n\
             pattern read skiff/v1/{CLUSTER}/nodes/%u/cmd\n\
             pattern read skiff/v1/{CLUSTER}/queue\n\
             pattern write skiff/v1/{CLUSTER}/nodes/%u/status\n\
             pattern write skiff/v1/{CLUSTER}/nodes/%u/events\n\
             pattern write skiff/v1/{CLUSTER}/nodes/%u/metrics\n\
             pattern write skiff/v1/{CLUSTER}/nodes/%u/reply\n\
             \n\
             user console\n\
             topic readwrite skiff/v1/#\n"
        ),
    )
    .expect("write acl");
    // mosquitto started as root runs as user mosquitto: let it read its files.
    use std::os::unix::fs::PermissionsExt;
    for f in ["", "ca.pem", "broker.pem", "broker.key", "acl"] {
        std::fs::set_permissions(pki.join(f), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let p = |n: &str| pki.join(n).display().to_string();
    Broker::start_configured(
        port,
        &format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n\
             set_tcp_nodelay true\n\
             acl_file {}\n",
            p("ca.pem"),
            p("broker.pem"),
            p("broker.key"),
            p("acl"),
        ),
        Some(identity(pki, "ca", "console")),
    )
}

/// mosquitto_sub for one retained message, with `args` as its TLS options.
fn sub_once(broker: &Broker, args: &[std::ffi::OsString], topic: &str) -> std::process::Output {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(args)
        .args(["-t", topic, "-C", "1", "-W", "3"])
        .output()
        .expect("run mosquitto_sub")
}

fn event(m: &Message) -> Option<&EventBody> {
    match m {
        Message::Event(e) => Some(&e.body),
        _ => None,
    }
}

#[test]
fn mutual_tls_node_id_from_certificate_acl_and_refusals() {
    require_env!();
    require_env!(tool_missing("openssl", "openssl"));
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = pki_dir.path();
    let broker = tls_broker(pki);
    let node = identity(pki, "ca", "node1");

    // No node_id in the config: the agent is who its certificate says.
    let agent = Agent::start_unnamed(&broker, CLUSTER, "tls-pi-1", &agent_tls(&node));
    let status = format!("skiff/v1/{CLUSTER}/nodes/tls-pi-1/status");
    let events = format!("skiff/v1/{CLUSTER}/nodes/tls-pi-1/events");
    let mut sub = Sub::start(&broker, &[&status, &events]);
    sub.wait("tls-pi-1 online over TLS", T, |t, m| match m {
        Message::Status(s) if t == status => (s.state == NodeState::Online).then_some(()),
        _ => None,
    });

    // The console identity applies a task; it runs.
    let files = tempfile::tempdir().expect("tempdir");
    let task = crate::harness::task_file(
        files.path(),
        "hello",
        r#"{"family":"hello","containerDefinitions":[{"name":"main","image":"busybox","entryPoint":["sh","-c"],"command":["echo over tls"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["apply", task.to_str().expect("utf8"), "--node", "tls-pi-1"],
    );
    assert!(
        out.status.success(),
        "apply over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = sub.wait("hello exited", T, |_, m| match event(m)? {
        EventBody::ContainerExited { task, exit, .. } if task.as_str() == "hello" => Some(*exit),
        _ => None,
    });
    assert_eq!(exit.code, 0);

    // The cluster queue through the documented ACL: the node takes the copy from its shared
    // subscription and the console sees it through.
    let job = crate::harness::task_file(
        files.path(),
        "tlsjob",
        r#"{"family":"tlsjob","containerDefinitions":[{"name":"main","image":"busybox","command":["true"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["run", job.to_str().expect("utf8"), "--wait-secs", "60"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("succeeded on tls-pi-1"),
        "ctl run over TLS: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another CA's certificate (claiming the same CN) and no certificate at all are refused.
    let desired = format!("skiff/v1/{CLUSTER}/nodes/tls-pi-1/desired");
    let rogue = sub_once(
        &broker,
        &identity(pki, "ca", "rogue").mosquitto_args(),
        &desired,
    );
    assert!(
        !rogue.status.success() && rogue.stdout.is_empty(),
        "a certificate from another CA got in: {rogue:?}"
    );
    let anonymous = sub_once(
        &broker,
        &["--cafile".into(), pki.join("ca.pem").into()],
        &desired,
    );
    assert!(
        !anonymous.status.success() && anonymous.stdout.is_empty(),
        "a client without a certificate got in: {anonymous:?}"
    );
    // Node 2 may not write node 1's desired state (the broker drops it); node 1 may not read
    // node 2's.
    let forged = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(identity(pki, "ca", "node2").mosquitto_args())
        .args(["-t", &desired, "-q", "1", "-r", "-m", "forged-by-node-2"])
        .output()
        .expect("run mosquitto_pub");
    eprintln!("node 2 publishing to node 1's desired: {forged:?}");
    let retained = sub_once(&broker, &broker.client_args(), &desired);
    assert!(
        !retained.stdout.is_empty()
            && !String::from_utf8_lossy(&retained.stdout).contains("forged-by-node-2"),
        "node 2 replaced node 1's desired state: {retained:?}"
    );
    let peek = sub_once(
        &broker,
        &identity(pki, "ca", "node2").mosquitto_args(),
        &desired,
    );
    assert!(
        peek.stdout.is_empty(),
        "node 2 read node 1's desired state: {peek:?}"
    );

    // A node that does not trust the broker's CA keeps retrying and says why.
    let mut wrong_ca = identity(pki, "ca", "node2");
    wrong_ca.ca = pki.join("rogue-ca.pem");
    let lost = Agent::start_unnamed(&broker, CLUSTER, "tls-pi-2", &agent_tls(&wrong_ca));
    wait_for("the certificate error in the log", T, || {
        let log = lost.stderr.lock().ok()?.clone();
        (log.contains("broker connection lost") && log.contains("invalid peer certificate"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let state = std::fs::read_to_string(format!("/proc/{}/stat", lost.pid())).unwrap_or_default();
    let state = state.rsplit(") ").next().unwrap_or("").chars().next();
    assert!(
        matches!(state, Some('R' | 'S' | 'D')),
        "the agent with a wrong CA is not running: {state:?}"
    );

    connect_times(&broker, pki);
}

/// Configuration errors: the key of another certificate, a node_id other than the CN, a file
/// that is not PEM. Each exits 78 naming the file and the problem.
#[test]
fn bad_tls_files_are_refused_at_start() {
    require_env!(tool_missing("openssl", "openssl"));
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = pki_dir.path();
    make_ca(pki, "ca");
    make_cert(pki, "ca", "node1", "tls-pi-1", false);
    make_cert(pki, "ca", "node2", "tls-pi-2", false);
    std::fs::write(pki.join("junk.pem"), "not a certificate\n").expect("write");
    let run = |extra: &str, tls: &ClientTls| {
        let config = pki.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "{extra}broker = \"mqtts://127.0.0.1:1\"\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n{1}",
                pki.display(),
                agent_tls(tls)
            ),
        )
        .expect("write config");
        let out = Command::new(crate::harness::SKIFF)
            .args(["agent", "--config"])
            .arg(&config)
            .output()
            .expect("run skiff agent");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{err}");
        assert_eq!(out.status.code(), Some(78), "{err}");
        err
    };
    let node1 = identity(pki, "ca", "node1");
    let mut mismatched = node1.clone();
    mismatched.key = pki.join("node2.key");
    let err = run("", &mismatched);
    assert!(
        err.contains(&format!(
            "key_file {} does not match the certificate in cert_file {}",
            mismatched.key.display(),
            mismatched.cert.display()
        )),
        "{err}"
    );
    let err = run("node_id = \"pi-9\"\n", &node1);
    assert!(
        err.contains("\"pi-9\" differs from the client certificate's CN \"tls-pi-1\""),
        "{err}"
    );
    let mut junk = node1.clone();
    junk.ca = pki.join("junk.pem");
    let err = run("", &junk);
    assert!(
        err.contains(&format!(
            "ca_file {}: not PEM: no CERTIFICATE section",
            junk.ca.display()
        )),
        "{err}"
    );
    let mut missing = node1;
    missing.cert = pki.join("absent.pem");
    let err = run("", &missing);
    assert!(
        err.contains(&format!(
            "cert_file {}: cannot read",
            missing.cert.display()
        )),
        "{err}"
    );
}

/// Connect time (TCP + TLS handshake + CONNECT/CONNACK) through skiff's MQTT shell, TLS against
/// a plain listener on the same machine; printed for docs/benchmarks.md.
fn connect_times(tls_broker: &Broker, pki: &Path) {
    let plain = Broker::start();
    let console = skiff_agent::tls::BrokerTlsConfig {
        ca_file: Some(pki.join("ca.pem")),
        cert_file: Some(pki.join("console.pem")),
        key_file: Some(pki.join("console.key")),
    }
    .load()
    .expect("console TLS");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let measure = |port: u16, tls: Option<&skiff_agent::tls::BrokerTls>| -> Duration {
        let mut times: Vec<Duration> = (0..15)
            .map(|i| {
                rt.block_on(async {
                    let start = Instant::now();
                    let mut conn = skiff_agent::mqtt::connect_tls(
                        skiff_agent::mqtt::ConnectOptions {
                            client_id: format!("tls-bench-{i}"),
                            broker: skiff_agent::config::BrokerUrl {
                                host: "127.0.0.1".into(),
                                port,
                            },
                            keepalive: Duration::from_secs(30),
                            last_will: None,
                            subscriptions: Vec::new(),
                        },
                        tls.map(|t| t.client.clone()),
                    );
                    loop {
                        match tokio::time::timeout(T, conn.inbound.recv()).await {
                            Ok(Some(skiff_agent::mqtt::Inbound::Connected)) => break,
                            Ok(Some(skiff_agent::mqtt::Inbound::Disconnected(e))) => {
                                panic!("bench connection failed: {e}")
                            }
                            Ok(Some(_)) => {}
                            other => panic!("bench connection: {other:?}"),
                        }
                    }
                    let took = start.elapsed();
                    let _ = conn.client.disconnect().await;
                    took
                })
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let plain_t = measure(plain.port, None);
    let tls_t = measure(tls_broker.port, Some(&console));
    eprintln!(
        "connect time (median of 15, loopback): plain {:.2} ms, mutual TLS (ECDSA P-256, TLS 1.3) {:.2} ms",
        plain_t.as_secs_f64() * 1000.0,
        tls_t.as_secs_f64() * 1000.0
    );
}
