//! Why a response's transfer took its time: TCP's own accounting between the writes of its
//! first and last bytes ([`TcpSpan`]), split the way TCP splits it (`ss -ti`'s busy,
//! rwnd_limited, sndbuf_limited), and the metrics that add it up per endpoint.
//!
//! TCP keeps, per socket, how long it was busy with data in flight, limited by the receiver's
//! window and limited by the send buffer (`tcp_sock.chrono_stat`, in kernel ticks). Between a
//! response's first and last write, whatever part of the elapsed time TCP was none of these,
//! it had nothing to send: the server was producing the bytes (disk, CPU, an upstream).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::{
    exchange::TcpSpan,
    metrics::{Buckets, EndpointLabels},
};

/// The `limited_by` label values, in the order of [`Split::parts`].
pub const LIMITS: [&str; 4] = ["application", "receiver_window", "send_buffer", "in_flight"];

/// Smoothed round-trip time buckets, in seconds: ×2 to ×2.5 steps from loopback (~20 µs) to a
/// congested satellite link.
pub const RTT_BUCKETS: [f64; 15] =
    [0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A response's transfer time, in seconds, by what held it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Split {
    /// TCP had nothing to send: the server was the bottleneck.
    pub application: f64,
    /// The client's receive window was full.
    pub receiver_window: f64,
    /// Our socket's send buffer was full.
    pub send_buffer: f64,
    /// Data sent and waiting for acknowledgements (RTT, loss, congestion).
    pub in_flight: f64,
}

impl Split {
    /// The parts, in the order of [`LIMITS`].
    pub fn parts(&self) -> [f64; 4] {
        [self.application, self.receiver_window, self.send_buffer, self.in_flight]
    }
}

/// Ticks between two readings of a cumulative tick counter. TCP's counters only grow while the
/// socket lives; a reading that went backwards (a socket disconnected and reused) counts none.
fn ticks(first: u32, last: u32) -> u64 {
    match last.wrapping_sub(first) {
        delta if delta > u32::MAX / 2 => 0,
        delta => u64::from(delta),
    }
}

/// How the `transfer_ns` between a response's first and last writes splits, from TCP's
/// accounting at those writes (ticks of `tick_ns`). TCP's parts come in whole ticks: where
/// they add up to more than the elapsed time (a tick started before the first write), they are
/// scaled down to it, so the four parts always add up to the transfer time.
pub fn split(transfer_ns: u64, span: &TcpSpan, tick_ns: u64) -> Split {
    let (first, last) = (&span.first, &span.last);
    let tcp = [
        ticks(first.rwnd_limited, last.rwnd_limited),
        ticks(first.sndbuf_limited, last.sndbuf_limited),
        ticks(first.in_flight, last.in_flight),
    ]
    .map(|t| t.saturating_mul(tick_ns) as f64);
    let transfer = transfer_ns as f64;
    let busy: f64 = tcp.iter().sum();
    let scale = if busy > transfer { transfer / busy } else { 1.0 };
    let [receiver_window, send_buffer, in_flight] = tcp.map(|ns| ns * scale / 1e9);
    let application = (transfer - busy).max(0.0) / 1e9;
    Split { application, receiver_window, send_buffer, in_flight }
}

/// Segments TCP retransmitted between two readings.
pub fn retransmits(first: u32, last: u32) -> u64 {
    ticks(first, last)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub endpoint: &'static str,
    pub limited_by: &'static str,
}

type Seconds = Counter<f64, AtomicU64>;

/// The transfer families, beside the request metrics.
pub struct TransferMetrics {
    pub seconds: Family<LimitLabels, Seconds>,
    pub retransmits: Family<EndpointLabels, Counter>,
    pub rtt: Family<EndpointLabels, Histogram, Buckets>,
}

impl TransferMetrics {
    /// `native`: the RTT histogram gets native buckets too.
    pub fn register(registry: &mut Registry, native: bool) -> Self {
        let seconds = Family::default();
        let retransmits = Family::default();
        let rtt = Family::new_with_constructor(Buckets { classic: &RTT_BUCKETS, native });
        registry.register(
            "http_response_transfer_seconds",
            "Time from the first to the last byte of responses written, by what TCP says held it: application (nothing to send), receiver_window, send_buffer, in_flight (waiting for acknowledgements)",
            seconds.clone(),
        );
        registry.register(
            "http_response_retransmits",
            "TCP segments retransmitted from a response's first write until the next response's first write or the connection's end",
            retransmits.clone(),
        );
        registry.register(
            "http_response_rtt_seconds",
            "The connection's smoothed round-trip time when the response's last byte was written",
            rtt.clone(),
        );
        TransferMetrics { seconds, retransmits, rtt }
    }
}

/// One endpoint's transfer series, fetched once (see `metrics::Handles`).
#[derive(Clone)]
pub struct TransferHandles {
    seconds: [Seconds; 4],
    retransmits: Counter,
    rtt: Histogram,
}

impl TransferHandles {
    pub fn new(metrics: &TransferMetrics, endpoint: &'static str) -> Self {
        TransferHandles {
            seconds: LIMITS.map(|limited_by| {
                metrics.seconds.get_or_create(&LimitLabels { endpoint, limited_by }).clone()
            }),
            retransmits: metrics.retransmits.get_or_create(&EndpointLabels { endpoint }).clone(),
            rtt: metrics.rtt.get_or_create(&EndpointLabels { endpoint }).clone(),
        }
    }

    /// A response of `transfer_ns` from its first to its last write, with TCP's `span`.
    pub fn transferred(&self, transfer_ns: u64, span: &TcpSpan, tick_ns: u64) {
        for (counter, seconds) in self.seconds.iter().zip(split(transfer_ns, span, tick_ns).parts()) {
            counter.inc_by(seconds);
        }
        self.retransmitted(retransmits(span.first.retrans, span.last.retrans));
        if span.last.srtt_us > 0 {
            self.rtt.observe(f64::from(span.last.srtt_us) / 1e6);
        }
    }

    pub fn retransmitted(&self, segments: u64) {
        if segments > 0 {
            self.retransmits.inc_by(segments);
        }
    }
}

#[cfg(test)]
mod tests {
    use observer_common::TcpChrono;

    use super::*;

    const TICK: u64 = 4_000_000;

    fn span(first: [u32; 4], last: [u32; 4]) -> TcpSpan {
        let at = |[in_flight, rwnd_limited, sndbuf_limited, retrans]: [u32; 4]| TcpChrono {
            in_flight,
            rwnd_limited,
            sndbuf_limited,
            retrans,
            srtt_us: 100,
            reserved: 0,
        };
        TcpSpan { first: at(first), last: at(last) }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_parts_add_up_to_the_transfer_time_and_the_rest_is_the_application() {
        // 2 s: 100 ticks (0.4 s) in flight, 250 (1 s) window limited, 25 (0.1 s) buffer limited.
        let s = split(2_000_000_000, &span([10, 20, 30, 0], [110, 270, 55, 3]), TICK);
        assert!(close(s.in_flight, 0.4) && close(s.receiver_window, 1.0) && close(s.send_buffer, 0.1));
        assert!(close(s.application, 0.5), "{s:?}");
        assert!(close(s.parts().iter().sum::<f64>(), 2.0));
    }

    #[test]
    fn whole_ticks_past_the_elapsed_time_are_scaled_down_to_it() {
        // 1 ms elapsed, but the busy interval crossed a tick boundary: 1 tick = 4 ms.
        let s = split(1_000_000, &span([5, 0, 0, 0], [6, 0, 0, 0]), TICK);
        assert!(close(s.in_flight, 0.001) && s.application == 0.0, "{s:?}");
        let s = split(0, &span([5, 0, 0, 0], [6, 0, 0, 0]), TICK);
        assert_eq!(s.parts().iter().sum::<f64>(), 0.0, "a one-write response takes no transfer time");
    }

    #[test]
    fn counters_that_wrap_count_forward_and_ones_that_went_back_count_nothing() {
        let s = split(8_000_000, &span([u32::MAX, 0, 0, 0], [1, 0, 0, 0]), TICK);
        assert!(close(s.in_flight, 0.008), "2 ticks across the wrap: {s:?}");
        let s = split(8_000_000, &span([50, 0, 0, 9], [10, 0, 0, 2]), TICK);
        assert!(close(s.application, 0.008), "{s:?}");
        assert_eq!(retransmits(9, 2), 0);
        assert_eq!(retransmits(u32::MAX, 2), 3);
    }
}
