//! Everything the simulator can be told, as flags with `MEDIA_SIM_*`
//! environment fallbacks, checked at start-up so a bad value stops the process
//! with an error naming the flag rather than surfacing as odd answers later.

use clap::Parser;
use livepush::{EventId, flags::positive_duration, telemetry::LogFormat};
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "media-sim",
    version,
    about = "Simulated media service: per-event live JSON that changes on a timer."
)]
pub struct Config {
    /// Address for the HTTP server.
    #[arg(long, env = "MEDIA_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// How often each event's data changes (e.g. 200ms, 2s, 1m). Periods are
    /// aligned to the Unix epoch, so every instance agrees on the data.
    #[arg(long, env = "MEDIA_SIM_CHANGE_EVERY", default_value = "2s", value_parser = positive_duration)]
    pub change_every: Duration,

    /// Comma-separated event ids that answer 404 from the start.
    #[arg(
        long,
        env = "MEDIA_SIM_ENDED",
        value_delimiter = ',',
        value_parser = EventId::parse
    )]
    pub ended: Vec<EventId>,

    /// Add `served_at_ms` (Unix time in ms of this answer) to every document,
    /// for latency measurements. Every answer then differs, so no ETag or
    /// Last-Modified is sent and conditional requests always get a full body.
    #[arg(long, env = "MEDIA_SIM_STAMP")]
    pub stamp: bool,

    /// Log lines as `text` or `json` (one object per line, for collectors).
    #[arg(long, env = "MEDIA_SIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from(std::iter::once("media-sim").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8090");
        assert_eq!(c.change_every, Duration::from_secs(2));
        assert!(c.ended.is_empty());
        assert!(!c.stamp);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn ended_is_a_comma_separated_list_of_valid_ids() {
        let c = parse(&["--ended", "a,b-2", "--stamp", "--change-every", "200ms"]).unwrap();
        let ids: Vec<&str> = c.ended.iter().map(EventId::as_str).collect();
        assert_eq!(ids, ["a", "b-2"]);
        assert!(c.stamp);
        assert_eq!(c.change_every, Duration::from_millis(200));
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--change-every", "0s"][..], "--change-every"),
            (&["--change-every", "500us"][..], "--change-every"),
            (&["--change-every", "soon"][..], "--change-every"),
            (&["--ended", "ok,a/b"][..], "--ended"),
            (&["--ended", ".."][..], "--ended"),
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--log-format", "xml"][..], "--log-format"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
