//! `DATABASE_URL`, parsed (SPEC §8): a single-host URL as sqlx reads it, or
//! libpq's multi-host form
//! `postgres://[user[:password]@]h1[:p1],h2[:p2]…[/db][?params]`, which
//! sqlx does not read ("invalid port number"). Pure: no I/O, so
//! `config` validates with it at start-up and `store::connect` uses it.
//!
//! The multi-host form becomes one single-host URL per host, in the order
//! given, each with the same user, password, database and parameters (so
//! every parameter sqlx supports still applies), minus
//! `target_session_attrs`, which the failover code implements. Errors are
//! one line and never show the user or password.

/// The hosts to try, in order, and whether the session must be read-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbUrl {
    /// Each host: a label for logs (`host:port`, no credentials) and its
    /// single-host URL.
    pub hosts: Vec<DbHost>,
    /// Connect only to a host that is read-write (not in recovery, not
    /// `transaction_read_only`) and follow a failover. Always set for more
    /// than one host: the service writes, so "any host" would be a standby.
    pub read_write: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub struct DbHost {
    pub label: String,
    pub url: String,
}

impl std::fmt::Debug for DbHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.write_str(&self.label)
    }
}

/// The one value of `target_session_attrs` the service accepts.
const READ_WRITE: &str = "read-write";

impl DbUrl {
    /// Parses `DATABASE_URL`; a single host without `target_session_attrs`
    /// is passed on unchanged (read exactly as before by sqlx).
    pub fn parse(url: &str) -> Result<DbUrl, String> {
        let (scheme, rest) = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|s| url.strip_prefix(s).map(|rest| (*s, rest)))
            .ok_or("DATABASE_URL must be a postgres:// URL")?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, host_list) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let (read_write, query) = session_attrs(query)?;
        if !host_list.contains(',') && !read_write {
            let label = if host_list.is_empty() {
                "(default host)"
            } else {
                host_list
            };
            let host = DbHost {
                label: label.to_owned(),
                url: url.to_owned(),
            };
            return Ok(DbUrl {
                hosts: vec![host],
                read_write: false,
            });
        }
        if let Some(q) = &query {
            if q.split('&')
                .any(|p| ["host", "hostaddr", "port"].contains(&p.split('=').next().unwrap_or("")))
            {
                return Err(
                    "DATABASE_URL: give the hosts in the host list, not as host=/hostaddr=/port= parameters".into(),
                );
            }
        }
        let credentials = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        let hosts = host_list
            .split(',')
            .map(|entry| {
                let (host, port) = host_port(entry)?;
                let label = match port {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                };
                let url = format!("{scheme}{credentials}{label}{path}{query}");
                Ok(DbHost { label, url })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(DbUrl {
            hosts,
            read_write: true,
        })
    }
}

/// Takes `target_session_attrs` out of the query: whether it asked for
/// read-write, and the query without it (`None` if nothing is left).
fn session_attrs(query: Option<&str>) -> Result<(bool, Option<String>), String> {
    let Some(query) = query else { return Ok((false, None)) };
    let mut read_write = false;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", READ_WRITE)) => read_write = true,
            Some(("target_session_attrs", other)) => {
                return Err(format!(
                "DATABASE_URL: target_session_attrs={other} is not supported (only {READ_WRITE}: the service writes)"
            ))
            }
            _ => kept.push(pair),
        }
    }
    Ok((read_write, (!kept.is_empty()).then(|| kept.join("&"))))
}

/// One entry of the host list: `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(entry: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("DATABASE_URL: unclosed [ in host {entry:?}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("DATABASE_URL: malformed host {entry:?}"))?,
            ),
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("DATABASE_URL: {addr:?} is not an IPv6 address"));
        }
        (&entry[..addr.len() + 2], port)
    } else {
        match entry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("DATABASE_URL: an empty host in the host list".into());
    }
    let name_ok = |b: u8| b.is_ascii_alphanumeric() || b".-_[]:".contains(&b);
    if !host.bytes().all(name_ok) {
        return Err(format!("DATABASE_URL: {host:?} is not a host name or address"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "DATABASE_URL: port {p:?} of host {host} is not a number 1-65535"
                ))
            }
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(s: &str) -> Vec<String> {
        DbUrl::parse(s).unwrap().hosts.into_iter().map(|h| h.url).collect()
    }

    #[test]
    fn a_single_host_is_passed_on_unchanged() {
        for s in [
            "postgres://u:p@db:5432/app?sslmode=disable",
            "postgresql://db/app",
            "postgres:///app?host=/var/run/postgresql",
            "postgres://u@[::1]:5432/app",
        ] {
            let parsed = DbUrl::parse(s).unwrap();
            assert!(!parsed.read_write, "{s}");
            assert_eq!(urls(s), vec![s.to_owned()]);
        }
    }

    #[test]
    fn the_multi_host_form_becomes_one_url_per_host_in_order() {
        let s = "postgres://app:s%40cret@h1:5432,h2:5433/bank?target_session_attrs=read-write&sslmode=prefer";
        let parsed = DbUrl::parse(s).unwrap();
        assert!(parsed.read_write);
        let labels: Vec<&str> = parsed.hosts.iter().map(|h| h.label.as_str()).collect();
        assert_eq!(labels, ["h1:5432", "h2:5433"]);
        assert_eq!(
            urls(s),
            [
                "postgres://app:s%40cret@h1:5432/bank?sslmode=prefer",
                "postgres://app:s%40cret@h2:5433/bank?sslmode=prefer",
            ]
        );
        // Default ports, IPv6, no credentials, no database, no other parameter.
        assert_eq!(
            urls("postgresql://10.0.0.1,[fe80::1]:6432,db-2?target_session_attrs=read-write"),
            [
                "postgresql://10.0.0.1",
                "postgresql://[fe80::1]:6432",
                "postgresql://db-2"
            ]
        );
        // Several hosts without target_session_attrs: still read-write.
        assert!(DbUrl::parse("postgres://h1,h2/db").unwrap().read_write);
        // One host asking for read-write is followed too.
        let one = DbUrl::parse("postgres://h1:5432/db?target_session_attrs=read-write").unwrap();
        assert!(one.read_write);
        assert_eq!(one.hosts[0].url, "postgres://h1:5432/db");
    }

    #[test]
    fn bad_forms_are_refused_with_one_line_and_no_password() {
        for (s, want) in [
            ("mysql://h1,h2/db", "must be a postgres:// URL"),
            ("postgres://u:pw@h1,,h2/db", "empty host"),
            ("postgres://u:pw@h1:abc,h2/db", "port \"abc\" of host h1"),
            ("postgres://u:pw@h1:0,h2/db", "port \"0\""),
            ("postgres://u:pw@h1:70000,h2/db", "port \"70000\""),
            (
                "postgres://u:pw@h1,h2/db?target_session_attrs=any",
                "target_session_attrs=any is not supported",
            ),
            (
                "postgres://h1/db?target_session_attrs=prefer-standby",
                "prefer-standby is not supported",
            ),
            ("postgres://h1,h2/db?port=5432", "not as host="),
            ("postgres://u:pw@h1,[::1/db", "unclosed ["),
            ("postgres://h1,[zz]:1/db", "not an IPv6 address"),
            ("postgres://h1,h 2/db", "not a host name"),
        ] {
            let e = DbUrl::parse(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains('\n') && !e.contains("pw"), "{s}: {e}");
        }
    }
}
