//! Golden byte fixtures: one checked-in encoding per message kind. An accidental wire change
//! (a reordered field, a changed enum) fails here. After an *intended* change (which must be a
//! new kind), regenerate with `SKIFF_BLESS=1 cargo test -p skiff-proto --test golden`.

use std::path::PathBuf;

use skiff_proto::codec::{decode, decode_as, encode, Kind, Message};
use skiff_proto::*;

fn n(s: &str) -> Name {
    s.parse().expect("valid name")
}

fn task() -> TaskDefinition {
    TaskDefinition {
        family: n("web"),
        revision: 3,
        containers: vec![ContainerDefinition {
            name: n("app"),
            image: "busybox:1.36".into(),
            entry_point: vec!["sh".into(), "-c".into()],
            command: vec!["echo hello".into()],
            environment: vec![EnvVar {
                name: "MODE".into(),
                value: "edge".into(),
            }],
            cpu: Some(256),
            memory_mib: Some(64),
            memory_reservation_mib: Some(32),
            essential: true,
            working_directory: Some("/srv".into()),
            user: Some("1000:1000".into()),
            health_check: None,
            stop_timeout_secs: None,
            depends_on: vec![],
            port_mappings: vec![],
            secrets: vec![Secret {
                name: "DB_PASSWORD".into(),
                sealed: "skiff-sealed:v1:c2VhbGVk".into(),
            }],
            security: ContainerSecurity {
                read_only_root: true,
                cap_add: vec!["NET_ADMIN".into()],
                cap_drop: vec!["MKNOD".into()],
                devices: vec![Device {
                    host_path: "/dev/ttyUSB0".into(),
                    container_path: None,
                    read: true,
                    write: true,
                    mknod: false,
                }],
                tmpfs: vec![Tmpfs {
                    container_path: "/tmp".into(),
                    size_mib: 16,
                    mount_options: vec!["noexec".into()],
                }],
                ..Default::default()
            },
            mount_points: vec![MountPoint {
                source_volume: n("data"),
                container_path: "/srv/data".into(),
                read_only: false,
            }],
        }],
        cpu: Some(512),
        memory_mib: Some(128),
        network_mode: NetworkMode::None,
        restart_policy: RestartPolicy::OnFailure,
        extensions: vec![
            TaskExtension::Schedule(Schedule {
                spec: ScheduleSpec::Cron {
                    expr: "*/5 * * * *".into(),
                    utc_offset_minutes: 60,
                    zone: None,
                },
                overlap: OverlapPolicy::Forbid,
                missed: MissedRunPolicy::RunOnce,
            }),
            TaskExtension::Volumes(vec![Volume {
                name: n("data"),
                host_path: Some("/srv/web".into()),
            }]),
        ],
    }
}

fn exit() -> ExitInfo {
    ExitInfo {
        code: 137,
        signal: Some(9),
        oom_killed: true,
    }
}

/// A service with a health check, a rollout configuration and every kind of scaling policy.
fn service() -> TaskDefinition {
    let mut t = task();
    t.family = n("api");
    t.containers[0].mount_points.clear();
    t.extensions = vec![TaskExtension::Service(Service {
        desired_count: 3,
        min_healthy_percent: 50,
        max_percent: 200,
        circuit_breaker: Some(CircuitBreaker { rollback: true }),
        health_grace_secs: 10,
        scaling: Some(AutoScaling {
            min: 1,
            max: 6,
            target_tracking: vec![TargetTracking {
                metric: ScalingMetric::Cpu,
                target_percent: 60,
                scale_out_cooldown_secs: 30,
                scale_in_cooldown_secs: 120,
                disable_scale_in: false,
            }],
            step: vec![StepScaling {
                metric: ScalingMetric::Memory,
                threshold_percent: 80,
                above: true,
                cooldown_secs: 60,
                steps: vec![StepAdjustment {
                    lower: Some(0),
                    upper: None,
                    change: 2,
                }],
            }],
            scheduled: vec![ScheduledScaling {
                cron: "0 8 * * 1-5".into(),
                utc_offset_minutes: 0,
                zone: Some("America/New_York".into()),
                min: 2,
                max: 6,
            }],
        }),
    })];
    t.containers[0].health_check = Some(HealthCheck {
        test: HealthTest::Shell("wget -q -O- localhost:8080/health".into()),
        interval_secs: 5,
        timeout_secs: 2,
        retries: 3,
        start_period_secs: 10,
    });
    t.containers[0].stop_timeout_secs = Some(20);
    t.network_mode = NetworkMode::Bridge;
    t.containers[0].port_mappings = vec![
        PortMapping {
            container_port: 8080,
            host_port: None,
            protocol: Protocol::Tcp,
        },
        PortMapping {
            container_port: 53,
            host_port: Some(5353),
            protocol: Protocol::Udp,
        },
    ];
    t
}

/// One representative message per kind.
fn samples() -> Vec<Message> {
    vec![
        Message::DesiredState(DesiredState {
            version: 42,
            cluster: n("demo"),
            node: Some(n("pi-1")),
            tasks: vec![task(), service()],
            signature: Some(Signature {
                key_id: n("fleet-1"),
                bytes: vec![7; 64],
            }),
        }),
        Message::Status(Status {
            node: n("pi-1"),
            state: NodeState::Online,
            agent_version: "0.1.0".into(),
            cluster_version: 5,
            node_version: 42,
            at_ms: 1_764_000_000_000,
            tasks: vec![TaskStatus {
                name: n("web"),
                revision: 3,
                state: TaskState::Running,
                restarts: 1,
                last_exit: Some(exit()),
                containers: vec![ContainerStatus {
                    name: n("app"),
                    state: ContainerState::Running,
                    pid: Some(4242),
                    exit: None,
                    health: Health::Healthy,
                    unfiltered: true,
                }],
                service: Some(n("api")),
                health: Health::Healthy,
                endpoints: vec![Endpoint {
                    container: n("app"),
                    container_port: 8080,
                    host_port: 49153,
                    protocol: Protocol::Tcp,
                    address: "10.88.0.2".into(),
                }],
            }],
            services: vec![ServiceStatus {
                name: n("api"),
                desired_count: 3,
                running_count: 4,
                healthy_count: 3,
                deployments: vec![
                    DeploymentStatus {
                        id: 2,
                        revision: 4,
                        primary: true,
                        rollout: RolloutState::InProgress,
                        desired_count: 3,
                        pending_count: 1,
                        running_count: 1,
                        healthy_count: 1,
                        failed_tasks: 0,
                    },
                    DeploymentStatus {
                        id: 1,
                        revision: 3,
                        primary: false,
                        rollout: RolloutState::Completed,
                        desired_count: 0,
                        pending_count: 0,
                        running_count: 3,
                        healthy_count: 2,
                        failed_tasks: 1,
                    },
                ],
            }],
            labels: [("arch", "arm64"), ("site", "north")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resources: NodeResources {
                cpus: 4,
                mem_total_bytes: 4 << 30,
                cpu_pct: 12.5,
                mem_used_bytes: 900 << 20,
            },
        }),
        Message::Event(Event {
            node: n("pi-1"),
            seq: 9,
            at_ms: 1_764_000_000_123,
            body: EventBody::ContainerExited {
                task: n("web"),
                container: n("app"),
                exit: exit(),
            },
        }),
        Message::Metrics(Metrics {
            node: n("pi-1"),
            samples: vec![MetricsSample {
                at_ms: 1_764_000_000_000,
                cpu_pct: 12.5,
                mem_used_bytes: 300 << 20,
                mem_total_bytes: 4 << 30,
                tasks: vec![TaskSample {
                    task: n("web"),
                    cpu_pct: 3.25,
                    mem_bytes: 5 << 20,
                    mem_limit_bytes: Some(64 << 20),
                }],
            }],
        }),
        Message::Command(Command {
            id: 77,
            body: CommandBody::Logs {
                task: n("web"),
                from: Some(10),
                max_bytes: 4096,
            },
        }),
        Message::Reply(Reply {
            id: 77,
            body: ReplyBody::Logs {
                start: 10,
                end: 16,
                data: b"hello\n".to_vec(),
            },
        }),
        Message::RunRequest(RunRequest {
            cluster: n("demo"),
            id: n("report-3fa9c1-1"),
            attempt: 2,
            issued_ms: 1_764_000_000_456,
            task: TaskDefinition {
                family: n("report"),
                restart_policy: RestartPolicy::Never,
                extensions: vec![
                    TaskExtension::Batch(Batch {
                        completions: 1,
                        retries: 2,
                        timeout_secs: Some(600),
                    }),
                    TaskExtension::Volumes(vec![Volume {
                        name: n("data"),
                        host_path: None,
                    }]),
                ],
                ..task()
            },
            signature: Some(Signature {
                key_id: n("fleet-1"),
                bytes: vec![7; 64],
            }),
        }),
    ]
}

fn fixture(kind: Kind) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{}.bin", kind.name()))
}

#[test]
fn every_kind_has_a_sample() {
    let kinds: Vec<Kind> = samples().iter().map(Message::kind).collect();
    assert_eq!(kinds, Kind::ALL.to_vec());
}

#[test]
fn golden_fixtures_decode_to_the_samples() {
    let bless = std::env::var_os("SKIFF_BLESS").is_some();
    for msg in samples() {
        let path = fixture(msg.kind());
        let bytes = encode(&msg).expect("sample encodes");
        if bless {
            std::fs::write(&path, &bytes).expect("write fixture");
        }
        let golden = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (SKIFF_BLESS=1 creates it)", path.display()));
        assert_eq!(
            decode(&golden).as_ref(),
            Ok(&msg),
            "{} no longer decodes to the sample",
            path.display()
        );
        assert_eq!(
            bytes,
            golden,
            "{}: the encoding changed; a changed message needs a new kind",
            path.display()
        );
        assert_eq!(decode_as(msg.kind(), &golden).as_ref(), Ok(&msg));
    }
}

#[test]
fn every_truncation_of_every_fixture_is_an_error() {
    for msg in samples() {
        let bytes = encode(&msg).expect("sample encodes");
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "{} truncated to {len} decoded",
                msg.kind().name()
            );
        }
    }
}

#[test]
fn flipped_header_bytes_are_named() {
    let mut bytes = encode(&samples()[0]).expect("sample encodes");
    bytes[2] = 2;
    let err = decode(&bytes).expect_err("major 2");
    assert!(err.is_unsupported());
    assert_eq!(
        err.to_string(),
        "unsupported protocol version 2 (this agent speaks 1)"
    );
    bytes[2] = 1;
    bytes[3] = 200;
    assert_eq!(
        decode(&bytes).expect_err("kind 200").to_string(),
        "unsupported message kind 200"
    );
}

#[test]
fn desired_state_bounds_are_checked_on_decode() {
    let Message::DesiredState(mut d) = samples().remove(0) else {
        panic!("first sample")
    };
    d.tasks[0].containers[0].essential = false;
    // Encode bypassing validation to play a hostile sender.
    let mut bytes = skiff_proto::codec::header_bytes(Kind::DesiredState).to_vec();
    bytes.extend(postcard::to_allocvec(&d).expect("encode"));
    let err = decode(&bytes).expect_err("no essential container");
    assert!(
        err.to_string()
            .contains("at least one container must be essential"),
        "{err}"
    );
}
