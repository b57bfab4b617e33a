//! Wrappers around a client stream that change how it is read or written: what they do not
//! change (TLS, socket and timing digests, shutdown, identity) is passed through to `inner`
//! by [`delegate_stream`], so that a wrapped stream is still a whole Pingora stream.

/// Implements Pingora's stream traits other than reading, writing and peeking for a wrapper
/// `$t` with an `inner: Stream` field, each passed through to it.
macro_rules! delegate_stream {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl pingora_core::protocols::Shutdown for $t {
            async fn shutdown(&mut self) {
                pingora_core::protocols::Shutdown::shutdown(&mut *self.inner).await
            }
        }

        impl pingora_core::protocols::UniqueID for $t {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                pingora_core::protocols::UniqueID::id(&*self.inner)
            }
        }

        impl pingora_core::protocols::Ssl for $t {
            fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
                pingora_core::protocols::Ssl::get_ssl(&*self.inner)
            }

            fn get_ssl_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::tls::SslDigest>> {
                pingora_core::protocols::Ssl::get_ssl_digest(&*self.inner)
            }

            fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::tls::ALPN> {
                pingora_core::protocols::Ssl::selected_alpn_proto(&*self.inner)
            }
        }

        impl pingora_core::protocols::GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                pingora_core::protocols::GetTimingDigest::get_timing_digest(&*self.inner)
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                pingora_core::protocols::GetTimingDigest::get_read_pending_time(&*self.inner)
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                pingora_core::protocols::GetTimingDigest::get_write_pending_time(&*self.inner)
            }
        }

        impl pingora_core::protocols::GetProxyDigest for $t {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                pingora_core::protocols::GetProxyDigest::get_proxy_digest(&*self.inner)
            }

            fn set_proxy_digest(
                &mut self,
                digest: pingora_core::protocols::raw_connect::ProxyDigest,
            ) {
                pingora_core::protocols::GetProxyDigest::set_proxy_digest(&mut *self.inner, digest)
            }
        }

        impl pingora_core::protocols::GetSocketDigest for $t {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                pingora_core::protocols::GetSocketDigest::get_socket_digest(&*self.inner)
            }

            fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
                pingora_core::protocols::GetSocketDigest::set_socket_digest(
                    &mut *self.inner,
                    digest,
                )
            }
        }
    };
}

pub(crate) use delegate_stream;
