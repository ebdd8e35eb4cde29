//! The responses the router makes itself: one `ErrorCode` per reason, with status and header value.

use http::StatusCode;

/// Why the router answered a request itself. The code is both the JSON
/// `error` field and the `x-slipway-error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A malformed request head, or one the upstream protocol cannot carry.
    BadRequest,
    HeadTooLarge,
    TooManyHeaders,
    HeadTimeout,
    /// Ambiguous or malformed message framing.
    BadFraming,
    /// A transfer coding other than `chunked` (same code, 501).
    UnsupportedCoding,
    BodyIncomplete,
    /// The request body stalled or came slower than `[client] body_min_rate`.
    BodyTimeout,
    BodyTooLarge,
    BadClientVersion,
    UpgradeRequired,
    NoRelease,
    NoInstance,
    UpstreamUnreachable,
    UpstreamFailed,
    UpstreamTimeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::HeadTooLarge => "head_too_large",
            ErrorCode::TooManyHeaders => "too_many_headers",
            ErrorCode::HeadTimeout => "head_timeout",
            ErrorCode::BadFraming | ErrorCode::UnsupportedCoding => "bad_framing",
            ErrorCode::BodyIncomplete => "body_incomplete",
            ErrorCode::BodyTimeout => "body_timeout",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::BadClientVersion => "bad_client_version",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::NoRelease => "no_release",
            ErrorCode::NoInstance => "no_instance",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The client caused it (its request or its pace): never held against an instance.
    pub fn is_client_fault(self) -> bool {
        !matches!(
            self,
            ErrorCode::NoRelease
                | ErrorCode::NoInstance
                | ErrorCode::UpstreamUnreachable
                | ErrorCode::UpstreamFailed
                | ErrorCode::UpstreamTimeout
        )
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadFraming | ErrorCode::BodyIncomplete | ErrorCode::BadClientVersion => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::HeadTooLarge | ErrorCode::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadTimeout | ErrorCode::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ErrorCode::NoRelease | ErrorCode::NoInstance => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamUnreachable | ErrorCode::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// A response the router makes itself: JSON `{"error", "reason"}` plus an
/// `x-slipway-error` header naming the code.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: ErrorCode,
    pub body: String,
}

impl Reply {
    pub fn new(code: ErrorCode, reason: &str) -> Reply {
        let body = serde_json::json!({ "error": code.as_str(), "reason": reason }).to_string();
        Reply { code, body }
    }

    /// A reply whose JSON body says more than the reason; it carries `error` itself.
    pub fn with_body(code: ErrorCode, body: serde_json::Value) -> Reply {
        Reply {
            code,
            body: body.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_keeps_the_status_and_name_it_had_as_a_literal() {
        use ErrorCode::*;
        let all = [
            (BadRequest, 400, "bad_request"),
            (HeadTooLarge, 431, "head_too_large"),
            (TooManyHeaders, 431, "too_many_headers"),
            (HeadTimeout, 408, "head_timeout"),
            (BadFraming, 400, "bad_framing"),
            (UnsupportedCoding, 501, "bad_framing"),
            (BodyIncomplete, 400, "body_incomplete"),
            (BodyTimeout, 408, "body_timeout"),
            (BodyTooLarge, 413, "body_too_large"),
            (BadClientVersion, 400, "bad_client_version"),
            (UpgradeRequired, 426, "upgrade_required"),
            (NoRelease, 503, "no_release"),
            (NoInstance, 503, "no_instance"),
            (UpstreamUnreachable, 502, "upstream_unreachable"),
            (UpstreamFailed, 502, "upstream_failed"),
            (UpstreamTimeout, 504, "upstream_timeout"),
        ];
        for (code, status, name) in all {
            assert_eq!((code.status().as_u16(), code.as_str()), (status, name), "{code:?}");
        }
        let r = Reply::new(NoInstance, "release v1 has no healthy instance");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "no_instance");
        assert_eq!(body["reason"], "release v1 has no healthy instance");
    }
}
