//! The broker shell: one rumqttc connection, polled in its own task, turned into [`Inbound`]
//! messages on a channel. Reconnects with capped exponential backoff (rumqttc's `poll` retries
//! immediately otherwise) and re-subscribes on every connection. Clean sessions, unless
//! [`SessionOptions::persistent`]: then the broker keeps the session (subscriptions, QoS 1
//! messages not yet acknowledged) across disconnects and restarts, and publishes on the
//! [`SessionOptions::held_topic`] are acknowledged by the owner ([`AckToken`]) once it has
//! made what it decided durable, not on receipt.

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
        /// On the held topic: acknowledge it (after acting on it) with [`AckToken::ack`].
        /// Every other message is acknowledged on receipt.
        ack: Option<AckToken>,
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

/// Acknowledges one held QoS 1 message to the broker. Dropping it without `ack` leaves the
/// message with the broker's session, which delivers it again after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckToken(rumqttc::Publish);

impl AckToken {
    /// Sends the PUBACK (queued on the client; not sent if the connection is gone, and then
    /// the broker delivers the message again).
    pub fn ack(self, client: &AsyncClient) {
        if let Err(e) = client.try_ack(&self.0) {
            tracing::warn!(error = %e, "cannot acknowledge a message; the broker will send it again");
        }
    }
}

/// Session options beyond [`ConnectOptions`].
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Keep the session at the broker (MQTT `clean_session = false`).
    pub persistent: bool,
    /// Publishes on this topic are acknowledged by the owner (see [`Inbound::Publish`]).
    pub held_topic: Option<String>,
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
    connect_session(opts, tls, SessionOptions::default())
}

/// [`connect_tls`] with session options.
pub fn connect_session(
    opts: ConnectOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    session: SessionOptions,
) -> Connection {
    let mut mo = MqttOptions::new(opts.client_id, opts.broker.host.clone(), opts.broker.port);
    if let Some(config) = tls {
        mo.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config),
        ));
    }
    mo.set_keep_alive(opts.keepalive);
    mo.set_clean_session(!session.persistent);
    let held = session.held_topic;
    mo.set_manual_acks(held.is_some());
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
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let is_held = held.as_deref() == Some(p.topic.as_str());
                    let ack = if held.is_none() {
                        None
                    } else if is_held && p.qos != QoS::AtMostOnce {
                        let mut token = p.clone();
                        token.payload = Default::default();
                        Some(AckToken(token))
                    } else {
                        // Manual acks are on for the connection: the rest right away.
                        if let Err(e) = sub_client.try_ack(&p) {
                            tracing::debug!(error = %e, "cannot acknowledge a message");
                        }
                        None
                    };
                    Some(Inbound::Publish {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        retained: p.retain,
                        ack,
                    })
                }
                Ok(_) => None,
                Err(e) => {
                    // What rumqttc kept to send again (unacknowledged publishes, requests made
                    // while down) is dropped, persistent session or not: the outbox owns the
                    // delivery of events and metrics and matches PUBACKs in order, which replays
                    // from the client would upset; status is published again on connect.
                    eventloop.pending.clear();
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
