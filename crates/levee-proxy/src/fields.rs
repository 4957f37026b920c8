//! A read-only view of a request's fields, whichever way levee holds them:
//! the lines as received (HTTP/1) or a map (HTTP/2). Routing and hashing
//! read requests through it.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::codec::parse::RawRequest;

#[derive(Clone, Copy)]
pub(crate) enum FieldsView<'a> {
    Map(&'a HeaderMap),
    Raw(&'a RawRequest),
}

impl<'a> FieldsView<'a> {
    /// The first value of the fields named `name`, and so on, until `f`
    /// returns something.
    pub fn find_map<T>(&self, name: &HeaderName, mut f: impl FnMut(&'a [u8]) -> Option<T>) -> Option<T> {
        match *self {
            FieldsView::Map(map) => map.get_all(name).iter().find_map(|v| f(v.as_bytes())),
            FieldsView::Raw(raw) => {
                let name = name.as_str().as_bytes();
                raw.kept()
                    .filter(|(_, field)| raw.head.name(field).eq_ignore_ascii_case(name))
                    .find_map(|(_, field)| f(raw.head.value(field)))
            }
        }
    }

    /// The first value of the fields named `name`.
    pub fn first(&self, name: &HeaderName) -> Option<&'a [u8]> {
        self.find_map(name, Some)
    }

    /// The first value of the fields named `name`, sharing the request's
    /// bytes rather than copying them.
    pub fn first_value(&self, name: &HeaderName) -> Option<HeaderValue> {
        match *self {
            FieldsView::Map(map) => map.get(name).cloned(),
            FieldsView::Raw(raw) => {
                let wanted = name.as_str().as_bytes();
                let (_, field) = raw
                    .kept()
                    .find(|(_, field)| raw.head.name(field).eq_ignore_ascii_case(wanted))?;
                let (from, to) = (field.value.0 as usize, field.value.1 as usize);
                HeaderValue::from_maybe_shared(raw.head.bytes.slice(from..to)).ok()
            }
        }
    }

    /// Every value of the fields named `name`, in order.
    pub fn all(&self, name: &HeaderName) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        self.find_map(name, |v| {
            out.push(v);
            None::<()>
        });
        out
    }

    /// Whether some field named `name` has exactly this value.
    pub fn has(&self, name: &HeaderName, value: &[u8]) -> bool {
        self.find_map(name, |v| (v == value).then_some(())).is_some()
    }
}
