//! TLS for the tests (feature `tls`): certificates written to a folder,
//! and a TLS-terminating proxy in front of a plain-TCP server.
//!
//! - [`Certs`]: a test CA, a server certificate it signed for `localhost`
//!   and `127.0.0.1`, a client certificate it signed, and an unrelated
//!   second CA for "wrong CA" tests, all as PEM files.
//! - [`TlsProxy`]: listens on `127.0.0.1`, terminates TLS with the server
//!   certificate and forwards the bytes to a plain-TCP upstream (tansu,
//!   which has no TLS listener of its own), counting what the clients
//!   sent, so a test can tell the traffic really went through it.
//!
//! ```no_run
//! # async fn demo() -> outbox_testkit::Result<()> {
//! use outbox_testkit::tls::{Certs, TlsProxy};
//! use outbox_testkit::Broker;
//!
//! let dir = std::env::temp_dir().join("my-test-certs");
//! let certs = Certs::generate(&dir)?;
//! let mut broker = Broker::builder().build()?;
//! let proxy = TlsProxy::start(&certs, &broker.addr())?;
//! broker.set_advertised_listener(Some(proxy.addr()));
//! broker.start().await?;
//! // … clients use `security.protocol=SSL`, `ssl.ca.location=certs.ca()`
//! // and `bootstrap.servers=proxy.addr()` …
//! assert!(proxy.bytes_from_clients() > 0);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::{Error, Result};

/// The client certificate's common name unless the caller names another
/// ([`Certs::generate_for_client`]): PostgreSQL's superuser in a fresh
/// cluster, which certificate authentication maps the CN to.
pub const DEFAULT_CLIENT_CN: &str = "postgres";

/// Certificates for one test, as PEM files in a folder:
///
/// | file | what |
/// | --- | --- |
/// | `ca.pem`, `ca-key.pem` | the test CA (self-signed) |
/// | `server.pem`, `server-key.pem` | a server certificate the CA signed, for DNS `localhost` and IP `127.0.0.1` |
/// | `client.pem`, `client-key.pem` | a client certificate the CA signed, CN [`DEFAULT_CLIENT_CN`] or the caller's |
/// | `other-ca.pem` | a second, unrelated CA that signed none of them, for "wrong CA" tests |
///
/// Keys are PKCS#8 PEM (`BEGIN PRIVATE KEY`, ECDSA P-256) with mode 0600,
/// as PostgreSQL wants them for `ssl_key_file`. The folder is not deleted
/// by this type: make it inside the test's own temporary folder.
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
    client_cn: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl Certs {
    /// Generates a CA, a server and a client certificate (CN
    /// [`DEFAULT_CLIENT_CN`]) and a second CA, and writes them into `dir`
    /// (created if needed; files there of the same names are replaced).
    /// Fails with [`Error::Io`] if generating or writing fails.
    pub fn generate(dir: impl AsRef<Path>) -> Result<Self> {
        Self::generate_for_client(dir, DEFAULT_CLIENT_CN)
    }

    /// [`generate`](Self::generate) with `client_cn` as the client
    /// certificate's common name (a PostgreSQL role, for certificate
    /// authentication).
    pub fn generate_for_client(dir: impl AsRef<Path>, client_cn: &str) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;

        let ca_key = key_pair()?;
        let ca = CertifiedIssuer::self_signed(ca_params("outbox test CA")?, ca_key)
            .map_err(tls_error("signing the test CA"))?;
        let other_ca = CertifiedIssuer::self_signed(ca_params("outbox other CA")?, key_pair()?)
            .map_err(tls_error("signing the other CA"))?;

        let server_key = key_pair()?;
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(tls_error("server certificate parameters"))?;
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_cert = server
            .signed_by(&server_key, &*ca)
            .map_err(tls_error("signing the server certificate"))?;

        let client_key = key_pair()?;
        let mut client = CertificateParams::new(Vec::<String>::new())
            .map_err(tls_error("client certificate parameters"))?;
        client
            .distinguished_name
            .push(DnType::CommonName, client_cn);
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.use_authority_key_identifier_extension = true;
        let client_cert = client
            .signed_by(&client_key, &*ca)
            .map_err(tls_error("signing the client certificate"))?;

        let certs = Certs {
            dir,
            client_cn: client_cn.to_owned(),
            server_chain: vec![server_cert.der().clone()],
            server_key: server_key.serialize_der(),
        };
        write(&certs.ca(), &ca.pem(), false)?;
        write(&certs.ca_key(), &ca.key().serialize_pem(), true)?;
        write(&certs.server_cert(), &server_cert.pem(), false)?;
        write(&certs.server_key(), &server_key.serialize_pem(), true)?;
        write(&certs.client_cert(), &client_cert.pem(), false)?;
        write(&certs.client_key(), &client_key.serialize_pem(), true)?;
        write(&certs.other_ca(), &other_ca.pem(), false)?;
        Ok(certs)
    }

    /// The folder the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ca.pem`: the CA that signed the server and client certificates
    /// (`ssl.ca.location`, `sslrootcert`, `ssl_ca_file`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `ca-key.pem`: the CA's private key (mode 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// `server.pem`: the server certificate, for DNS `localhost` and IP
    /// `127.0.0.1` (`ssl_cert_file`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// `server-key.pem`: the server's private key, PKCS#8 PEM, mode 0600
    /// (`ssl_key_file`).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// `client.pem`: the client certificate (`sslcert`,
    /// `ssl.certificate.location`).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// `client-key.pem`: the client's private key, PKCS#8 PEM, mode 0600
    /// (`sslkey`, `ssl.key.location`).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    /// `other-ca.pem`: a CA that signed nothing here; a client trusting
    /// only it must reject the server.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The client certificate's common name.
    pub fn client_cn(&self) -> &str {
        &self.client_cn
    }

    /// A rustls server configuration presenting the server certificate,
    /// without client authentication.
    fn server_config(&self) -> Result<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(tls_error("choosing TLS versions"))?
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .map_err(tls_error("loading the server certificate"))
    }
}

fn key_pair() -> Result<KeyPair> {
    KeyPair::generate().map_err(tls_error("generating a key pair"))
}

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(tls_error("CA parameters"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Certificate and TLS configuration errors, as [`Error::Io`] (the kit's
/// error for "an operation on the machine failed").
fn tls_error<E>(what: &str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.to_owned();
    move |e| Error::Io {
        what,
        source: std::io::Error::other(e),
    }
}

/// Writes `pem` to `path`; a private key gets mode 0600 (set before its
/// contents are written).
fn write(path: &Path, pem: &str, private: bool) -> Result<()> {
    let what = || format!("writing {}", path.display());
    let _ = std::fs::remove_file(path);
    let file = std::fs::File::create(path).map_err(Error::io(what()))?;
    if private {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io(format!("chmod 600 {}", path.display())))?;
    }
    drop(file);
    std::fs::write(path, pem).map_err(Error::io(what()))
}

/// Counters shared between a [`TlsProxy`] and its connections.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    handshakes: AtomicU64,
    failed_handshakes: AtomicU64,
    bytes_from_clients: AtomicU64,
    bytes_to_clients: AtomicU64,
}

/// A TLS-terminating TCP proxy on `127.0.0.1`: accepts TLS with the
/// [`Certs`] server certificate (no client certificate asked for) and
/// forwards the decrypted bytes both ways to a plain-TCP upstream, one
/// upstream connection per client connection.
///
/// It runs on a thread and a Tokio runtime of its own, so it keeps serving
/// whatever the test's own runtime is doing (blocking calls included).
/// Dropping the guard stops it: the listener closes and every open
/// connection is cut.
#[derive(Debug)]
pub struct TlsProxy {
    addr: SocketAddr,
    upstream: String,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    /// Starts a proxy in front of `upstream` (`host:port`, plain TCP) on a
    /// port the kernel picks on `127.0.0.1`, presenting `certs`' server
    /// certificate. It listens when this returns; the upstream is only
    /// connected to when a client has completed its handshake, so it need
    /// not be up yet. Fails with [`Error::Io`].
    pub fn start(certs: &Certs, upstream: &str) -> Result<Self> {
        let acceptor = TlsAcceptor::from(Arc::new(certs.server_config()?));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(Error::io("binding the TLS proxy's port"))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("reading the TLS proxy's port"))?;
        listener
            .set_nonblocking(true)
            .map_err(Error::io("setting the TLS proxy's listener non-blocking"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("starting the TLS proxy's runtime"))?;
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let counters = Arc::clone(&counters);
            let upstream = upstream.to_owned();
            std::thread::Builder::new()
                .name(format!("tls-proxy-{}", addr.port()))
                .spawn(move || {
                    runtime.block_on(async move {
                        let Ok(listener) = TcpListener::from_std(listener) else {
                            return;
                        };
                        tokio::select! {
                            _ = stopped => {}
                            () = serve(listener, acceptor, upstream, counters) => {}
                        }
                    });
                    // Dropping the runtime drops every connection task.
                })
                .map_err(Error::io("starting the TLS proxy's thread"))?
        };
        Ok(TlsProxy {
            addr,
            upstream: upstream.to_owned(),
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`: what clients connect to (and what a broker behind
    /// it must advertise). The server certificate carries the IP address
    /// `127.0.0.1`, so clients that check the host name accept it.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `localhost:PORT`, the same listener by the certificate's DNS name.
    /// The proxy listens on IPv4 only; a client that resolves `localhost`
    /// to `::1` first falls back to `127.0.0.1` after a refused connection.
    pub fn localhost_addr(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The upstream it forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// How many TLS handshakes completed (the client accepted the
    /// certificate, as far as the server can tell: a client that rejects
    /// it aborts the handshake).
    pub fn handshakes(&self) -> u64 {
        self.counters.handshakes.load(Ordering::Relaxed)
    }

    /// How many TLS handshakes failed, e.g. because the client did not
    /// trust the certificate, or spoke plain TCP.
    pub fn failed_handshakes(&self) -> u64 {
        self.counters.failed_handshakes.load(Ordering::Relaxed)
    }

    /// How many bytes clients sent through TLS, decrypted: exactly what
    /// was forwarded to the upstream (so it measures the application's
    /// bytes, compressed or not, not the TLS overhead).
    pub fn bytes_from_clients(&self) -> u64 {
        self.counters.bytes_from_clients.load(Ordering::Relaxed)
    }

    /// How many bytes the upstream sent back to the clients.
    pub fn bytes_to_clients(&self) -> u64 {
        self.counters.bytes_to_clients.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until the listener fails; each runs in `tasks`,
/// which cuts them all when this future is dropped.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor, upstream: String, c: Arc<Counters>) {
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Ok((client, _)) = accepted else {
            // EMFILE and the like: wait a little rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        c.connections.fetch_add(1, Ordering::Relaxed);
        let (acceptor, upstream, c) = (acceptor.clone(), upstream.clone(), Arc::clone(&c));
        tasks.spawn(async move {
            let _ = client.set_nodelay(true);
            let tls = match acceptor.accept(client).await {
                Ok(tls) => tls,
                Err(_) => {
                    c.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            c.handshakes.fetch_add(1, Ordering::Relaxed);
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = tokio::io::split(tls);
            let (server_read, server_write) = server.into_split();
            // Either direction failing ends the connection; one side
            // closing cleanly lets the other finish.
            let _ = tokio::try_join!(
                pipe(client_read, server_write, &c.bytes_from_clients),
                pipe(server_read, client_write, &c.bytes_to_clients),
            );
        });
    }
}

/// Copies `from` to `to` until `from` ends, then shuts `to` down, adding
/// every byte to `count`.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("outbox-tls-test-{}", crate::random_suffix()))
    }

    #[test]
    fn writes_every_file_keys_private() {
        let dir = temp_dir();
        let certs = Certs::generate_for_client(&dir, "relay").unwrap();
        for (path, begins) in [
            (certs.ca(), "-----BEGIN CERTIFICATE-----"),
            (certs.server_cert(), "-----BEGIN CERTIFICATE-----"),
            (certs.client_cert(), "-----BEGIN CERTIFICATE-----"),
            (certs.other_ca(), "-----BEGIN CERTIFICATE-----"),
            (certs.ca_key(), "-----BEGIN PRIVATE KEY-----"),
            (certs.server_key(), "-----BEGIN PRIVATE KEY-----"),
            (certs.client_key(), "-----BEGIN PRIVATE KEY-----"),
        ] {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with(begins), "{}: {text}", path.display());
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            if begins.contains("PRIVATE") {
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
        assert_eq!(certs.client_cn(), "relay");
        // Generating again into the same folder replaces the files.
        Certs::generate(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rustls client trusting `ca` connects to the proxy, which echoes
    /// through a tiny upstream.
    async fn echo_through(proxy: &TlsProxy, ca: &Path, name: &str) -> std::io::Result<Vec<u8>> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::ServerName;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(proxy.addr()).await?;
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut tls = connector.connect(server_name, tcp).await?;
        tls.write_all(b"hello").await?;
        let mut back = [0u8; 5];
        tls.read_exact(&mut back).await?;
        Ok(back.to_vec())
    }

    #[tokio::test]
    async fn proxies_verified_tls_and_counts_bytes() {
        let dir = temp_dir();
        let certs = Certs::generate(&dir).unwrap();
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = TlsProxy::start(&certs, &upstream_addr).unwrap();
        assert_eq!(proxy.upstream(), upstream_addr);
        for name in ["localhost", "127.0.0.1"] {
            let back = echo_through(&proxy, &certs.ca(), name).await.unwrap();
            assert_eq!(back, b"hello");
        }
        assert_eq!(proxy.bytes_from_clients(), 10);
        assert_eq!(proxy.bytes_to_clients(), 10);
        assert_eq!(proxy.handshakes(), 2);

        // A client trusting another CA fails the handshake.
        let wrong = echo_through(&proxy, &certs.other_ca(), "localhost").await;
        let e = wrong.unwrap_err().to_string();
        assert!(e.contains("UnknownIssuer"), "{e}");
        crate::wait_for(
            "the failed handshake",
            std::time::Duration::from_secs(5),
            || async { Ok::<_, Error>((proxy.failed_handshakes() == 1).then_some(())) },
        )
        .await
        .unwrap();
        assert_eq!(proxy.bytes_from_clients(), 10);

        // Dropped, it stops listening.
        let addr = proxy.addr();
        drop(proxy);
        assert!(TcpStream::connect(&addr).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
