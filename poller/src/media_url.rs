//! The media service URL templates and the only place an event id becomes
//! part of a URL. The id is already allow-listed ([`EventId`]); it is still
//! percent-encoded here so that this function stays safe on its own.
//! `--media-url` and `--heartbeat-url` take one id (`{event_id}`),
//! `--media-batch-url` a comma-separated list (`{event_ids}`).

use livepush::EventId;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Url;

const PLACEHOLDER: &str = "{event_id}";
const PLACEHOLDER_MANY: &str = "{event_ids}";

/// Everything but RFC 3986 "unreserved" characters is encoded.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A validated `--media-url`: an http or https URL containing `{event_id}` in its
/// path or query (never in the scheme or host, so an id cannot choose which
/// server the poller talks to).
#[derive(Debug, Clone)]
pub struct MediaUrl {
    template: String,
    placeholder: &'static str,
}

impl MediaUrl {
    /// A template for one event (`{event_id}`).
    pub fn parse(template: &str) -> Result<Self, String> {
        Self::parse_with(template, PLACEHOLDER)
    }

    /// A template for a batch of events (`{event_ids}`).
    pub fn parse_batch(template: &str) -> Result<Self, String> {
        Self::parse_with(template, PLACEHOLDER_MANY)
    }

    fn parse_with(template: &str, placeholder: &'static str) -> Result<Self, String> {
        // `{event_id}` is a prefix of `{event_ids}`: look for the whole one.
        let other = if placeholder == PLACEHOLDER { PLACEHOLDER_MANY } else { PLACEHOLDER };
        if !template.replace(other, "").contains(placeholder) {
            return Err(format!("must contain {placeholder}"));
        }
        let this = Self { template: template.to_owned(), placeholder };
        let a = this.render("a").map_err(|e| format!("not a valid URL: {e}"))?;
        let b = this.render("b").map_err(|e| format!("not a valid URL: {e}"))?;
        if !matches!(a.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        if a.host_str().is_none() || a.origin() != b.origin() {
            return Err(format!("{placeholder} must be in the path or query, not the host"));
        }
        Ok(this)
    }

    /// The URL to poll for `id`.
    pub fn for_event(&self, id: &EventId) -> Url {
        self.render(id.as_str()).expect("an allow-listed, encoded id keeps a valid template valid")
    }

    /// The URL to poll for `ids` at once: each percent-encoded, joined by
    /// commas (which the encoding never produces, so the list splits back
    /// unambiguously).
    pub fn for_events(&self, ids: &[EventId]) -> Url {
        let joined: Vec<String> =
            ids.iter().map(|id| utf8_percent_encode(id.as_str(), NOT_UNRESERVED).to_string()).collect();
        Url::parse(&self.template.replace(self.placeholder, &joined.join(",")))
            .expect("allow-listed, encoded ids keep a valid template valid")
    }

    fn render(&self, id: &str) -> Result<Url, url::ParseError> {
        let encoded = utf8_percent_encode(id, NOT_UNRESERVED).to_string();
        Url::parse(&self.template.replace(self.placeholder, &encoded))
    }
}

impl std::fmt::Display for MediaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_into_path_and_query() {
        let m = MediaUrl::parse("http://media:8090/live/{event_id}?x={event_id}").unwrap();
        let u = m.for_event(&EventId::parse("ev-1.a~b_c").unwrap());
        assert_eq!(u.as_str(), "http://media:8090/live/ev-1.a~b_c?x=ev-1.a~b_c");
    }

    #[test]
    fn ids_with_dots_stay_in_their_segment() {
        let m = MediaUrl::parse("http://media/live/{event_id}/info").unwrap();
        let u = m.for_event(&EventId::parse("...x").unwrap());
        assert_eq!(u.path(), "/live/...x/info");
    }

    #[test]
    fn https_and_ipv6_literals() {
        let id = EventId::parse("e1").unwrap();
        let m = MediaUrl::parse("https://media.example/v1/live/{event_id}?key=1").unwrap();
        assert_eq!(m.for_event(&id).as_str(), "https://media.example/v1/live/e1?key=1");
        let m = MediaUrl::parse("http://[::1]:8090/live/{event_id}").unwrap();
        let u = m.for_event(&id);
        assert_eq!((u.host_str(), u.port(), u.path()), (Some("[::1]"), Some(8090), "/live/e1"));
    }

    #[test]
    fn batch_templates_join_encoded_ids() {
        let m = MediaUrl::parse_batch("https://media/v1/live?ids={event_ids}&key=1").unwrap();
        let ids = ["a", "b.c", "~d_-"].map(|i| EventId::parse(i).unwrap());
        assert_eq!(m.for_events(&ids).as_str(), "https://media/v1/live?ids=a,b.c,~d_-&key=1");
        assert!(MediaUrl::parse_batch("http://media/live/{event_id}").is_err());
        assert!(MediaUrl::parse("http://media/live?ids={event_ids}").is_err());
        assert!(MediaUrl::parse_batch("http://{event_ids}/x").is_err());
    }

    #[test]
    fn refuses_bad_templates() {
        for t in [
            "http://media/live",
            "ftp://media/{event_id}",
            "file:///live/{event_id}",
            "http://[::1/live/{event_id}",
            "http://{event_id}.media/live",
            "http://media:{event_id}/x",
            "{event_id}",
            "nonsense {event_id}",
        ] {
            assert!(MediaUrl::parse(t).is_err(), "{t}");
        }
    }
}
