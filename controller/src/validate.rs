//! Checks of names and numbers in requests: a 400 naming the field when one is wrong.

use crate::api::{ApiError, ApiResult};

/// A resource's name: lowercase letters, digits and '-', 1 to 63, starting with a letter.
pub fn name(field: &str, value: &str) -> ApiResult<()> {
    let ok = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!("{value:?} is not a name: lowercase letters, digits and '-', 1 to 63, starting with a letter"),
        ))
    }
}

/// A VM's name, which is also its host name: letters, digits and '-', 1 to 63, not starting
/// or ending with '-'.
pub fn hostname(field: &str, value: &str) -> ApiResult<()> {
    let ok = (1..=63).contains(&value.len())
        && !value.starts_with('-')
        && !value.ends_with('-')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!("{value:?} is not a host name: letters, digits and '-', 1 to 63, not starting or ending with '-'"),
        ))
    }
}

/// `host:port`, with a port.
pub fn address(field: &str, value: &str) -> ApiResult<()> {
    let port = value
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(()),
        _ => Err(ApiError::bad(field, format!("{value:?} is not host:port"))),
    }
}

pub fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    low: T,
    high: T,
) -> ApiResult<()> {
    if value < low || value > high {
        return Err(ApiError::bad(
            field,
            format!("{value} is not within {low} to {high}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_host_names() {
        assert!(name("n", "lan-1").is_ok());
        for bad in ["", "1lan", "Lan", "la n", &"a".repeat(64)] {
            assert!(name("n", bad).is_err(), "{bad:?}");
        }
        assert!(hostname("n", "Web-1").is_ok());
        for bad in ["", "-a", "a-", "a.b", "a_b"] {
            assert!(hostname("n", bad).is_err(), "{bad:?}");
        }
        assert!(address("a", "10.0.0.1:7301").is_ok());
        assert!(address("a", "node-1:7301").is_ok());
        for bad in ["10.0.0.1", ":7301", "a:0", "a:x"] {
            assert!(address("a", bad).is_err(), "{bad:?}");
        }
    }
}
