//! Checks of single values that every section makes: names, durations
//! and counts. Each records what is wrong under its path and still returns
//! (a default, or `None`), so that validation goes on to the next problem.

use std::time::Duration;

use levee_core::access::{Cidr, CidrSet};
use levee_core::id::check_name;

use crate::duration::parse_duration;
use crate::error::Errors;

pub(super) fn name_of(e: &mut Errors, path: &str, name: &str) -> Option<String> {
    match check_name(name) {
        Ok(()) => Some(name.to_string()),
        Err(why) => {
            e.push(path, format!("name {name:?} {why}"));
            None
        }
    }
}

/// A duration that must be positive: a zero timeout would mean "no deadline".
pub(super) fn timeout(e: &mut Errors, path: &str, raw: Option<String>, default: Duration) -> Duration {
    let Some(text) = raw else {
        return default;
    };
    match parse_duration(&text) {
        Ok(d) if d > Duration::ZERO => d,
        Ok(_) => {
            e.push(path, "must be greater than 0: every wait in levee has a deadline");
            default
        }
        Err(why) => {
            e.push(path, why);
            default
        }
    }
}

/// A duration that may be zero (turning the feature it sets off).
pub(super) fn duration_or_zero(
    e: &mut Errors,
    path: &str,
    raw: Option<String>,
    default: Duration,
) -> Duration {
    let Some(text) = raw else {
        return default;
    };
    if text == "0" {
        return Duration::ZERO;
    }
    parse_duration(&text).unwrap_or_else(|why| {
        e.push(path, why);
        default
    })
}

/// An integer within bounds, or the default when absent.
pub(super) fn count(
    e: &mut Errors,
    path: &str,
    raw: Option<i64>,
    default: usize,
    min: usize,
    max: usize,
) -> Option<usize> {
    let Some(n) = raw else {
        return Some(default);
    };
    if n < min as i64 || n > max as i64 {
        e.push(path, format!("must be between {min} and {max}, got {n}"));
        return None;
    }
    Some(n as usize)
}

/// A list of CIDR blocks, each error named by its index.
pub(super) fn cidr_set(e: &mut Errors, path: &str, raw: Option<Vec<String>>) -> CidrSet {
    let blocks = raw
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, text)| match text.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(why) => {
                e.push(format!("{path}[{i}]"), format!("{text:?}: {why}"));
                None
            }
        })
        .collect();
    CidrSet::new(blocks)
}
