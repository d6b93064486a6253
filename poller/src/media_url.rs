//! The media service URL template and the only place an event id becomes part
//! of a URL. The id is already allow-listed ([`EventId`]); it is still
//! percent-encoded here so that this function stays safe on its own.

use livepush::EventId;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Url;

const PLACEHOLDER: &str = "{event_id}";

/// Everything but RFC 3986 "unreserved" characters is encoded.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A validated `--media-url`: an http or https URL containing `{event_id}` in its
/// path or query (never in the scheme or host, so an id cannot choose which
/// server the poller talks to).
#[derive(Debug, Clone)]
pub struct MediaUrl {
    template: String,
}

impl MediaUrl {
    pub fn parse(template: &str) -> Result<Self, String> {
        if !template.contains(PLACEHOLDER) {
            return Err(format!("must contain {PLACEHOLDER}"));
        }
        let this = Self { template: template.to_owned() };
        let a = this.render("a").map_err(|e| format!("not a valid URL: {e}"))?;
        let b = this.render("b").map_err(|e| format!("not a valid URL: {e}"))?;
        if !matches!(a.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        if a.host_str().is_none() || a.origin() != b.origin() {
            return Err(format!("{PLACEHOLDER} must be in the path or query, not the host"));
        }
        Ok(this)
    }

    /// The URL to poll for `id`.
    pub fn for_event(&self, id: &EventId) -> Url {
        self.render(id.as_str()).expect("an allow-listed, encoded id keeps a valid template valid")
    }

    fn render(&self, id: &str) -> Result<Url, url::ParseError> {
        let encoded = utf8_percent_encode(id, NOT_UNRESERVED).to_string();
        Url::parse(&self.template.replace(PLACEHOLDER, &encoded))
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
