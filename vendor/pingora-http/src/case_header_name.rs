// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The name both as sent ([CaseHeaderName]) and as looked up ([HeaderName]).
    ///
    /// GATEHOUSE PATCH (vendor/README.md, 4): inserting a header used to turn every name into
    /// a [CaseHeaderName] and then parse it back into a [HeaderName], allocating for every name
    /// outside the standard set, even when the caller passed a [HeaderName] it had built once.
    /// Types that already hold a [HeaderName] return it as it is.
    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)>
    where
        Self: Sized,
    {
        let case_header_name = self.into_case_header_name();
        let header_name = HeaderName::from_bytes(case_header_name.as_slice())
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok((case_header_name, header_name))
    }

    /// The name as looked up ([HeaderName]) only, for a message that keeps no case.
    ///
    /// GATEHOUSE PATCH (vendor/README.md, 4): a header inserted into a message without a case
    /// map (`build_no_case`) was spelled in title case all the same, and the spelling dropped.
    /// Types that already hold a [HeaderName] return it as it is.
    fn into_header_name(self) -> Result<HeaderName>
    where
        Self: Sized,
    {
        self.into_case_and_header_name().map(|(_, name)| name)
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(titled_header_name(&self)), self))
    }

    fn into_header_name(self) -> Result<HeaderName> {
        Ok(self)
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(titled_header_name(self)), self.clone()))
    }

    fn into_header_name(self) -> Result<HeaderName> {
        Ok(self.clone())
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // GATEHOUSE PATCH (vendor/README.md, 4): names a proxy commonly sets on responses, so
        // that inserting them by [HeaderName] copies nothing (a name outside this set is copied).
        header::STRICT_TRANSPORT_SECURITY => "Strict-Transport-Security",
        header::X_CONTENT_TYPE_OPTIONS => "X-Content-Type-Options",
        header::X_FRAME_OPTIONS => "X-Frame-Options",
        header::REFERRER_POLICY => "Referrer-Policy",
        header::VARY => "Vary",
        header::LOCATION => "Location",
        header::RETRY_AFTER => "Retry-After",
        header::WWW_AUTHENTICATE => "WWW-Authenticate",
        header::ACCESS_CONTROL_ALLOW_ORIGIN => "Access-Control-Allow-Origin",
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS => "Access-Control-Allow-Credentials",
        header::ACCESS_CONTROL_ALLOW_METHODS => "Access-Control-Allow-Methods",
        header::ACCESS_CONTROL_ALLOW_HEADERS => "Access-Control-Allow-Headers",
        header::ACCESS_CONTROL_EXPOSE_HEADERS => "Access-Control-Expose-Headers",
        header::ACCESS_CONTROL_MAX_AGE => "Access-Control-Max-Age",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }

    /// GATEHOUSE PATCH (vendor/README.md, 4): the looked-up name alone, as the pair gives it.
    #[test]
    fn gatehouse_patch_header_name_alone() {
        assert_eq!("FoO".into_header_name().unwrap(), "foo");
        assert_eq!("X-Up".to_string().into_header_name().unwrap(), "x-up");
        assert_eq!(header::SERVER.into_header_name().unwrap(), header::SERVER);
        assert_eq!(
            (&header::REFERRER_POLICY).into_header_name().unwrap(),
            header::REFERRER_POLICY
        );
        assert!("bad name".into_header_name().is_err());
    }

    #[test]
    fn gatehouse_patch_both_names_at_once() {
        for (case, name) in [
            ("FoO".into_case_and_header_name().unwrap(), "foo"),
            (
                header::SERVER.into_case_and_header_name().unwrap(),
                "server",
            ),
            (
                (&header::REFERRER_POLICY)
                    .into_case_and_header_name()
                    .unwrap(),
                "referrer-policy",
            ),
            (
                HeaderName::from_static("x-request-id")
                    .into_case_and_header_name()
                    .unwrap(),
                "x-request-id",
            ),
        ] {
            assert_eq!(case.1, name);
            assert_eq!(case.0.as_slice().to_ascii_lowercase(), name.as_bytes());
        }
        assert_eq!(
            header::SERVER
                .into_case_and_header_name()
                .unwrap()
                .0
                .as_slice(),
            b"Server"
        );
        assert!("bad name".into_case_and_header_name().is_err());
    }
}
