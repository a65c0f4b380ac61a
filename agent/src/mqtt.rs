//! The broker shell: one rumqttc connection, polled in its own task, turned into [`Inbound`]
//! messages on a channel. Reconnects with capped exponential backoff (rumqttc's `poll` retries
//! immediately otherwise) and re-subscribes on every connection (clean sessions).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::config::BrokerUrl;

/// Largest incoming packet. Above the protocol's 128 KiB message bound on purpose: an oversized
/// message is received and rejected by name instead of breaking the connection (and, when
/// retained, breaking it again after every reconnect).
pub const MAX_INCOMING_PACKET: usize = 1024 * 1024;
/// Largest outgoing packet: a 128 KiB message plus topic and header.
pub const MAX_OUTGOING_PACKET: usize = skiff_proto::limits::MAX_MESSAGE + 1024;

/// What the connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Connected (again); subscriptions are being made.
    Connected,
    /// The connection broke; reconnecting.
    Disconnected(String),
    /// Subscriptions acknowledged (retained messages follow).
    Subscribed,
    /// A message on a subscribed topic.
    Publish {
        topic: String,
        payload: Vec<u8>,
        retained: bool,
    },
    /// A QoS 1 publish was acknowledged.
    PubAck,
}

/// A connection: the client to publish with, the inbound messages.
#[derive(Debug)]
pub struct Connection {
    pub client: AsyncClient,
    pub inbound: mpsc::Receiver<Inbound>,
}

/// Options for [`connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    pub broker: BrokerUrl,
    pub keepalive: Duration,
    pub last_will: Option<(String, Vec<u8>)>,
    pub subscriptions: Vec<String>,
}

/// Starts connecting in the background (plain TCP).
pub fn connect(opts: ConnectOptions) -> Connection {
    connect_tls(opts, None)
}

/// Starts connecting in the background, over TLS when `tls` is given (`mqtts://`): the broker's
/// certificate is checked against the configured roots and for the host name (or IP address)
/// of the broker URL.
pub fn connect_tls(opts: ConnectOptions, tls: Option<Arc<rustls::ClientConfig>>) -> Connection {
    let mut mo = MqttOptions::new(opts.client_id, opts.broker.host.clone(), opts.broker.port);
    if let Some(config) = tls {
        mo.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config),
        ));
    }
    mo.set_keep_alive(opts.keepalive);
    mo.set_clean_session(true);
    mo.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    mo.set_request_channel_capacity(256);
    if let Some((topic, payload)) = opts.last_will {
        mo.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    let (client, mut eventloop) = AsyncClient::new(mo, 256);
    // Small control messages: Nagle's algorithm would hold each one back for an ACK.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.network_options = net;
    let (tx, inbound) = mpsc::channel(256);
    let subs = opts.subscriptions;
    let sub_client = client.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut reported_down = false;
        loop {
            let next = match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(250);
                    reported_down = false;
                    let filters = subs
                        .iter()
                        .map(|s| rumqttc::SubscribeFilter::new(s.clone(), QoS::AtLeastOnce));
                    if !subs.is_empty() {
                        if let Err(e) = sub_client.try_subscribe_many(filters) {
                            tracing::warn!(error = %e, "cannot queue subscriptions");
                        }
                    }
                    Some(Inbound::Connected)
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => Some(Inbound::Subscribed),
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => Some(Inbound::PubAck),
                // We asked to disconnect (a clean stop) and DISCONNECT is flushed: polling on
                // would connect again. Ending here closes `inbound`, which tells the owner.
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => Some(Inbound::Publish {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                    retained: p.retain,
                }),
                Ok(_) => None,
                Err(e) => {
                    let msg = e.to_string();
                    let first = !reported_down;
                    reported_down = true;
                    if tx.is_closed() {
                        return;
                    }
                    if first {
                        let _ = tx.send(Inbound::Disconnected(msg)).await;
                    } else {
                        tracing::debug!(error = %msg, "broker still unreachable");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    None
                }
            };
            if let Some(m) = next {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        }
    });
    Connection { client, inbound }
}
