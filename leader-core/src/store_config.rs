//! What every store's configuration shares: a redacting [`Secret`], the
//! percent-decoding of URL user names and passwords, and the grammar and
//! limits of URL options (durations, booleans, timeouts, unknown names).
//!
//! The store crates (`leader-redis`, `leader-etcd`, `leader-postgres`) build
//! their `*Config` types from these, so a duration, a password or a typo in
//! an option name is treated the same way whichever store a URL selects.
//!
//! Errors are [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig),
//! name the option or URL part that is wrong, and never contain a password:
//! a store adds its name with [`Error::with_store`].

use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::config::parse_duration;
use crate::error::{Error, Result};

/// The longest connect or request timeout a store accepts. Longer bounds are
/// surely mistakes (a unit error), and deadlines built from them must not
/// overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A password or other secret. `Debug` and `Display` never show it; only
/// [`Secret::expose`] does, for handing to a store's client.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: pass it to a client, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Percent-decodes one part of a URL (`what`: "user name", "database name",
/// ...) into UTF-8.
///
/// # Errors
///
/// When the decoded bytes are not UTF-8; the message names `what` and does
/// not repeat the input.
pub fn decode_url_part(what: &str, raw: &str) -> Result<String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            Error::invalid_config(format!(
                "the URL {what} is not valid UTF-8 after percent-decoding"
            ))
        })
}

/// Percent-decodes a URL password into a [`Secret`].
///
/// # Errors
///
/// When the decoded bytes are not UTF-8; the message never contains the
/// password.
pub fn decode_url_password(raw: &str) -> Result<Secret> {
    decode_url_part("password", raw).map(Secret)
}

/// Parses the value of a duration option in the grammar of the election
/// configuration ([`parse_duration`]): seconds
/// (`"2"`, `"0.5"`) or units (`"500ms"`, `"1m 30s"`).
///
/// # Errors
///
/// An unparseable, negative or non-finite value; the message names the option.
pub fn parse_duration_option(name: &str, value: &str) -> Result<Duration> {
    parse_duration(value)
        .map_err(|e| Error::invalid_config(format!("option {name}: {}", e.message())))
}

/// Parses the value of a boolean option: `true`/`false`, `1`/`0`,
/// `yes`/`no`, without regard to case.
///
/// # Errors
///
/// Any other value; the message names the option.
pub fn parse_bool_option(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::invalid_config(format!(
            "option {name}={value:?} is not a boolean (true or false)"
        ))),
    }
}

/// Checks a connect or request timeout: above zero and at most [`MAX_TIMEOUT`].
///
/// # Errors
///
/// Naming `name` and the value.
pub fn check_timeout(name: &str, value: Duration) -> Result<()> {
    if value.is_zero() || value > MAX_TIMEOUT {
        return Err(Error::invalid_config(format!(
            "{name} must be above zero and at most {MAX_TIMEOUT:?}, got {value:?}"
        )));
    }
    Ok(())
}

/// The error for an option this store does not know. The name is shortened
/// to 32 characters (it may be a password pasted into the wrong place);
/// `known` lists what is accepted, so that a typo in a security option is
/// refused instead of silently ignored.
pub fn unknown_option(name: &str, known: &[&str]) -> Error {
    let shown: String = name.chars().take(32).collect();
    Error::invalid_config(format!(
        "unknown option '{shown}' (known: {})",
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const PW: &str = "hunter2-secret";

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let s = Secret::new(PW);
        let shown = format!("{s:?} {s} {s:#?}");
        assert!(!shown.contains(PW), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        assert_eq!(s.expose(), PW);
        assert!(!s.is_empty());
        assert!(Secret::new("").is_empty());
    }

    #[test]
    fn url_parts_are_percent_decoded() {
        assert_eq!(
            decode_url_part("user name", "al%40ice").expect("valid"),
            "al@ice"
        );
        let pw = decode_url_password("p%40ss%2Cw%3Ard%26").expect("valid");
        assert_eq!(pw.expose(), "p@ss,w:rd&");
    }

    #[test]
    fn undecodable_parts_are_named_without_their_value() {
        let err = decode_url_part("user name", "bob%FF").expect_err("not UTF-8");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("user name"), "{err}");
        assert!(!err.to_string().contains("bob"), "{err}");

        let err = decode_url_password(&format!("{PW}%FF")).expect_err("not UTF-8");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("password"), "{shown}");
        assert!(!shown.contains(PW), "{shown}");
    }

    #[test]
    fn duration_options_use_the_election_grammar() {
        for (text, expected) in [
            ("2", Duration::from_secs(2)),
            ("0.25", Duration::from_millis(250)),
            ("500ms", Duration::from_millis(500)),
            ("1m 30s", Duration::from_secs(90)),
        ] {
            assert_eq!(parse_duration_option("t", text).expect(text), expected);
        }
        for bad in ["soon", "-1", "NaN", ""] {
            let err = parse_duration_option("request_timeout", bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad}");
            assert!(
                err.to_string().contains("option request_timeout"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn boolean_options() {
        for (text, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("false", false),
            ("0", false),
            ("No", false),
        ] {
            assert_eq!(parse_bool_option("tls", text).expect(text), expected);
        }
        let err = parse_bool_option("tls", "maybe").expect_err("maybe");
        assert!(err.to_string().contains("option tls"), "{err}");
    }

    #[test]
    fn timeouts_must_be_positive_and_bounded() {
        check_timeout("request_timeout", Duration::from_millis(1)).expect("1 ms");
        check_timeout("request_timeout", MAX_TIMEOUT).expect("the limit");
        for bad in [Duration::ZERO, MAX_TIMEOUT + Duration::from_millis(1)] {
            let err = check_timeout("request_timeout", bad).expect_err("out of range");
            assert_eq!(err.kind(), ErrorKind::InvalidConfig);
            assert!(err.to_string().contains("request_timeout"), "{err}");
        }
    }

    #[test]
    fn unknown_options_are_named_shortened_and_listed() {
        let err = unknown_option("sll", &["ssl", "user"]);
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("'sll'"), "{err}");
        assert!(err.to_string().contains("known: ssl, user"), "{err}");
        let long = "x".repeat(40);
        let err = unknown_option(&long, &[]);
        assert!(!err.to_string().contains(&long), "{err}");
        assert!(err.to_string().contains(&"x".repeat(32)), "{err}");
    }
}
