//! Validation of the client connection caps, with the default derived from the process's
//! file-descriptor limit.

use toml::Spanned;

use super::file::ServerSection;
use super::validate::Validator;
use crate::ratelimit::connections::{self, ConnectionLimits};

impl Validator<'_> {
    pub(super) fn connection_limits(&mut self, s: &ServerSection) -> ConnectionLimits {
        let derived = connections::default_total(fd_limit());
        let total = match &s.max_client_connections {
            Some(v) => self.connection_cap(v, "server.max_client_connections", derived),
            None => derived,
        };
        let per_ip = s.max_client_connections_per_ip.as_ref().map(|v| {
            let cap = self.connection_cap(v, "server.max_client_connections_per_ip", total);
            if cap > total {
                self.fail(
                    v,
                    "server.max_client_connections_per_ip",
                    "must not exceed server.max_client_connections",
                );
            }
            cap
        });
        ConnectionLimits { total, per_ip }
    }

    fn connection_cap(&mut self, v: &Spanned<u64>, field: &str, fallback: usize) -> usize {
        match usize::try_from(*v.get_ref()) {
            Ok(0) | Err(_) => {
                self.fail(v, field, "must be a positive number of connections");
                fallback
            }
            Ok(cap) => cap,
        }
    }
}

/// The descriptors this process may open (its soft `RLIMIT_NOFILE`; start-up raises it to the
/// hard limit first, see `server::raise_fd_limit`).
fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _hard)| soft)
}
