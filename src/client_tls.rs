//! The TLS settings of the mirror's outgoing HTTPS clients kept per connection worker
//! (upstreams, object stores, peers): the platform's trusted roots, read and parsed once per
//! process. reqwest reads them for every client it builds (about 0.28 MB each), and with a
//! client per worker (`percore`) that was one copy per core for each upstream and store.
//! Imports nothing from ocimirror.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;

/// What reqwest itself would build: the platform verifier (the system's roots, and
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` when set), TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 offered.
fn build() -> Result<ClientConfig, String> {
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| format!("the platform's trusted roots: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client builder with the process's shared TLS settings. Clones of one config share its
/// verifier (and so the roots) and its session cache. Should the roots not load, the builder
/// is reqwest's own, and reqwest reports the problem when it builds the client.
pub fn builder() -> reqwest::ClientBuilder {
    static SHARED: OnceLock<Result<ClientConfig, String>> = OnceLock::new();
    let builder = reqwest::Client::builder();
    match SHARED.get_or_init(build) {
        Ok(config) => builder.use_preconfigured_tls(config.clone()),
        Err(e) => {
            tracing::debug!(error = %e, "TLS client settings not shared");
            builder
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rustls::ServerConfig;
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;

    use super::*;

    /// Serves a self-signed certificate and remembers the protocols each client offered.
    #[derive(Debug)]
    struct Recorder {
        key: Arc<CertifiedKey>,
        offered: Mutex<Vec<Vec<Vec<u8>>>>,
    }

    impl ResolvesServerCert for Recorder {
        fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            let alpn = hello.alpn().map(|a| a.map(<[u8]>::to_vec).collect());
            self.offered.lock().unwrap().push(alpn.unwrap_or_default());
            Some(self.key.clone())
        }
    }

    /// A client with the shared settings verifies certificates (one no root vouches for is
    /// refused) and offers HTTP/2 and HTTP/1.1, as reqwest's own settings do; several clients
    /// get the same verifier.
    #[tokio::test]
    async fn clients_verify_and_offer_what_reqwests_own_settings_do() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = provider
            .key_provider
            .load_private_key(cert.signing_key.serialize_der().try_into().unwrap())
            .unwrap();
        let recorder = Arc::new(Recorder {
            key: Arc::new(CertifiedKey::new(vec![cert.cert.der().clone()], key)),
            offered: Mutex::new(Vec::new()),
        });
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(recorder.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        for _ in 0..2 {
            let client = builder().build().unwrap();
            let err = client
                .get(format!("https://localhost:{port}/"))
                .send()
                .await
                .unwrap_err();
            let chain = format!("{:?}", anyhow_chain(&err));
            assert!(
                chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate"),
                "{chain}"
            );
        }
        let offered = recorder.offered.lock().unwrap().clone();
        assert_eq!(offered.len(), 2);
        for o in offered {
            assert_eq!(o, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        }
    }

    fn anyhow_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut s = e.source();
        while let Some(x) = s {
            out.push(format!("{x} ({x:?})"));
            s = x.source();
        }
        out
    }
}
