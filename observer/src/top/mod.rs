//! `observer top`: a live terminal view of the request metrics, one row per endpoint,
//! refreshed every interval, from a running daemon's `/metrics` or from an in-process one.

mod exposition;
mod native;
mod table;
mod upstream;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use native::Quantile;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
use prost::Message;
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    widgets::{Cell, Paragraph, Row, Table},
};
pub use table::SortBy;

use crate::{metrics::Metrics, serve::PROTOBUF};

/// Where the numbers come from.
pub enum Source {
    /// A running daemon's `/metrics`.
    Url(String),
    /// The observer running in this process (`observer top --pid`).
    Local(Arc<Metrics>),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Url(url) => url.clone(),
            Source::Local(_) => "attached here".into(),
        }
    }

    /// The metrics now: in Prometheus' protobuf format, whose histograms carry their native
    /// buckets (a daemon that answers in text is read as text).
    fn snapshot(&self) -> anyhow::Result<table::Snapshot> {
        let samples = match self {
            Source::Url(url) => fetch(url).with_context(|| format!("reading {url}"))?,
            Source::Local(metrics) => exposition::from_families(&metrics.families()),
        };
        Ok(table::Snapshot::new(&samples, Instant::now()))
    }
}

fn fetch(url: &str) -> anyhow::Result<Vec<exposition::Sample>> {
    let mut response = ureq::get(url)
        .header("Accept", PROTOBUF)
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()?;
    let protobuf = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/vnd.google.protobuf"));
    if !protobuf {
        return Ok(exposition::parse(&response.body_mut().read_to_string()?));
    }
    let body = response.body_mut().read_to_vec()?;
    let mut rest = &body[..];
    let mut families = Vec::new();
    while !rest.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut rest).context("a protobuf MetricFamily")?);
    }
    Ok(exposition::from_families(&families))
}

/// What the screen shows.
struct View {
    source: String,
    interval: Duration,
    sort: SortBy,
    reverse: bool,
    rows: Vec<table::Row>,
    listeners: Vec<table::ListenerRow>,
    upstreams: Vec<upstream::UpstreamRow>,
    /// The last refresh's failure, shown until one succeeds.
    problem: Option<String>,
}

/// Puts the terminal back however `show` ends (error, panic, the daemon's task failing).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the view until `q`, Esc or Ctrl-C.
pub async fn show(source: Source, interval: Duration, sort: SortBy) -> anyhow::Result<()> {
    // Fail before taking the terminal over when the daemon cannot be read at all.
    let mut before = source.snapshot()?;
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _guard = TerminalGuard;
    let mut view = View {
        source: source.describe(),
        interval,
        sort,
        reverse: false,
        rows: Vec::new(),
        listeners: Vec::new(),
        upstreams: Vec::new(),
        problem: None,
    };
    let mut next_refresh = Instant::now() + interval;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut dirty = true;
    loop {
        ticker.tick().await;
        while event::poll(Duration::ZERO)? {
            let Event::Key(key) = event::read()? else {
                dirty = true; // a resize
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                KeyCode::Char('s') | KeyCode::Right | KeyCode::Tab => view.sort = view.sort.next(),
                KeyCode::Char('r') => view.reverse = !view.reverse,
                KeyCode::Char(digit @ '1'..='9') => {
                    view.sort = SortBy::ALL[digit as usize - '1' as usize];
                }
                _ => {}
            }
            dirty = true;
        }
        if Instant::now() >= next_refresh {
            next_refresh += interval;
            match source.snapshot() {
                Ok(now) => {
                    view.rows = table::rows(&before, &now);
                    view.listeners = table::listener_rows(&before, &now);
                    view.upstreams = table::upstream_rows(&before, &now);
                    view.problem = None;
                    before = now;
                }
                Err(e) => view.problem = Some(format!("{e:#}")),
            }
            dirty = true;
        }
        if dirty {
            view.sort.sort(&mut view.rows, view.reverse);
            draw(&mut terminal, &view)?;
            dirty = false;
        }
    }
}

fn draw(terminal: &mut DefaultTerminal, view: &View) -> anyhow::Result<()> {
    terminal.draw(|frame| render(frame, view)).context("drawing")?;
    Ok(())
}

/// Column titles, in `SortBy::ALL` order, and their widths (80 columns in all). WAIT99: the
/// p99 of how long new connections waited, from handshake to the server's first read. HELD:
/// what held response transfers most and its share of their time (application, receiver
/// window, send buffer, in flight), from TCP's own accounting.
const COLUMNS: [(&str, u16); 9] = [
    ("ENDPOINT", 14),
    ("REQ/S", 7),
    ("INFL", 5),
    ("P50", 7),
    ("P99", 7),
    ("ERR%", 6),
    ("BYTES/S", 8),
    ("WAIT99", 7),
    ("HELD", 11),
];

fn render(frame: &mut Frame, view: &View) {
    let listener_lines = (view.listeners.len() + view.upstreams.len()) as u16;
    let [top, listeners, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(listener_lines),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let total: f64 = view.rows.iter().map(|r| r.rate).sum();
    let in_flight: f64 = view.rows.iter().map(|r| r.in_flight).sum();
    let summary = format!(
        "{} │ {} req/s │ {in_flight} in flight │ every {}s",
        view.source,
        rate(total),
        view.interval.as_secs_f64()
    );
    frame.render_widget(Paragraph::new(summary).style(Style::new().add_modifier(Modifier::BOLD)), top);
    let listeners_lines = view.listeners.iter().map(|l| {
        format!(
            "listener :{:<6} queue {:>5} / {:<5} drops {}/s",
            l.port,
            l.queued,
            l.limit,
            rate(l.drops_rate)
        )
    });
    let lines: Vec<ratatui::text::Line> =
        listeners_lines.chain(view.upstreams.iter().map(upstream_line)).map(Into::into).collect();
    frame.render_widget(Paragraph::new(lines), listeners);

    let header = Row::new(COLUMNS.iter().zip(SortBy::ALL).map(|(&(title, _), column)| {
        let marker = match (column == view.sort, view.reverse) {
            (false, _) => "",
            (true, false) if column == SortBy::Endpoint => "▲",
            (true, false) => "▼",
            (true, true) if column == SortBy::Endpoint => "▼",
            (true, true) => "▲",
        };
        Cell::from(format!("{title}{marker}"))
    }))
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = view.rows.iter().map(|row| {
        Row::new([
            row.endpoint.clone(),
            rate(row.rate),
            format!("{}", row.in_flight),
            row.p50.map_or("-".into(), quantile),
            row.p99.map_or("-".into(), quantile),
            row.error_ratio.map_or("-".into(), |r| format!("{:.1}", 100.0 * r)),
            bytes(row.bytes_rate),
            row.wait_p99.map_or("-".into(), quantile),
            row.limited.map_or("-".into(), |(part, share)| {
                format!("{} {:.0}%", table::LIMIT_NAMES[part], 100.0 * share)
            }),
        ])
    });
    let widths = COLUMNS.map(|(_, width)| Constraint::Length(width));
    frame.render_widget(Table::new(rows, widths).header(header).column_spacing(1), body);

    let keys = match &view.problem {
        Some(problem) => format!("! {problem}"),
        None => "s/→ sort column · 1-9 pick · r reverse · q quit".into(),
    };
    frame.render_widget(Paragraph::new(keys), bottom);
}

/// An upstream (a peer the targets call): its requests, their p99 and 5xx share, its
/// connects' p99 and failures.
fn upstream_line(u: &upstream::UpstreamRow) -> String {
    let q = |q: Option<Quantile>| q.map_or("-".into(), quantile);
    let errors = u.error_ratio.map_or("-".into(), |r| format!("{:.1}%", 100.0 * r));
    format!(
        "upstream {:<21} {:>6} req/s p99 {:>7} err {:>6} connect p99 {:>7} fail {}/s",
        u.peer,
        rate(u.rate),
        q(u.p99),
        errors,
        q(u.connect_p99),
        rate(u.failures_rate)
    )
}

fn rate(per_second: f64) -> String {
    match per_second {
        r if r >= 10_000.0 => format!("{:.1}k", r / 1000.0),
        r if r >= 100.0 => format!("{r:.0}"),
        r => format!("{r:.1}"),
    }
}

/// A quantile; one only known to lie below or above a bucket bound says so (`<5µs`).
fn quantile(q: Quantile) -> String {
    match q {
        Quantile::At(s) => seconds(s),
        Quantile::Below(s) => format!("<{}", seconds(s)),
        Quantile::Above(s) => format!(">{}", seconds(s)),
    }
}

fn seconds(s: f64) -> String {
    match s {
        s if s < 1e-5 => format!("{:.1}µs", s * 1e6),
        s if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        s if s < 1.0 => format!("{:.1}ms", s * 1e3),
        s => format!("{s:.2}s"),
    }
}

fn bytes(per_second: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = per_second;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_fit_their_columns() {
        assert_eq!(seconds(0.000_25), "250µs");
        assert_eq!(quantile(Quantile::Below(5e-6)), "<5.0µs");
        assert_eq!(quantile(Quantile::At(4.2e-6)), "4.2µs");
        assert_eq!(seconds(0.0125), "12.5ms");
        assert_eq!(seconds(2.5), "2.50s");
        assert_eq!(bytes(12_345_678.0), "12.3M");
        assert_eq!(rate(123_456.0), "123.5k");
        assert_eq!(rate(2.25), "2.2");
        let widest = COLUMNS.iter().map(|c| c.1).sum::<u16>() + COLUMNS.len() as u16 - 1;
        assert!(widest <= 80, "{widest}");
    }
}
