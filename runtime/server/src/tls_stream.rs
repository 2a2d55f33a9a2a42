//! A server TLS stream on rustls' unbuffered API that holds no buffer
//! while its connection is idle.
//!
//! rustls' buffered `ServerConnection` keeps a receive buffer of at least
//! 4 KiB per connection for as long as the connection lives (its deframer
//! never shrinks below one read), which is most of what an idle WebSocket
//! costs. Here the connection owns buffers only while they hold something:
//!
//! - reads go into a per-thread scratch buffer; what is left of a record
//!   that has not fully arrived is copied into the connection's own
//!   `incoming` buffer, which is empty (no allocation) between records;
//! - decrypted plaintext goes straight into the reader's buffer, and only
//!   what does not fit is kept (`plain`);
//! - writes are encrypted into a per-thread scratch buffer and written at
//!   once; only what the socket does not take is kept (`outgoing`), and a
//!   write waits until that is sent, so at most one write is held.
//!
//! The TLS itself (handshake, record protection, alerts, key updates,
//! close_notify) is rustls'; this module only moves bytes.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest TLS record on the wire: a 5-byte header and 2^14 bytes of
/// plaintext with up to 2,048 bytes of expansion (TLS 1.2's limit).
const MAX_RECORD: usize = 5 + 16_384 + 2_048;

/// Bytes a read asks the socket for at least.
const MIN_READ: usize = 2 * MAX_RECORD;

/// Plaintext encrypted per `poll_write`: four full records.
const MAX_WRITE: usize = 4 * 16_384;

/// Bytes a handshake may leave unprocessed (a handshake message rustls has
/// not joined yet; rustls itself refuses messages over 64 KiB).
const MAX_PENDING: usize = 64 * 1024 + 2 * MAX_RECORD;

thread_local! {
    /// Where reads land and writes are encrypted, shared by every
    /// connection polled on this thread (never across an `.await`).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A TLS server connection over `IO` (a `TcpStream`), as `AsyncRead` and
/// `AsyncWrite` of its plaintext.
pub struct ServerTlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received bytes not processed yet (part of a record).
    incoming: Vec<u8>,
    /// Decrypted plaintext the reader has not taken yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes not written yet, from `outgoing_at`.
    outgoing: Vec<u8>,
    outgoing_at: usize,
    /// The peer closed its side (close_notify): reads return end of file.
    read_closed: bool,
    /// This side sent close_notify: writes fail.
    write_closed: bool,
    /// The connection failed (a TLS error, or the socket closed without a
    /// close_notify): every later read and write fails alike.
    failed: Option<(io::ErrorKind, String)>,
}

/// Accept a TLS connection on `io`: the handshake, then the stream.
/// The caller bounds it with a deadline.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<ServerTlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut stream = ServerTlsStream {
        io,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        outgoing_at: 0,
        read_closed: false,
        write_closed: false,
        failed: None,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// How processing received records ended.
#[derive(Debug, PartialEq, Eq)]
enum Processed {
    /// Everything complete was processed; more bytes are needed.
    NeedData,
    /// The peer sent close_notify.
    PeerClosed,
}

impl<IO> ServerTlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The transport, e.g. for its peer address.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The rustls connection (negotiated version, cipher suite, SNI).
    pub fn connection(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// Bytes of buffers this connection holds now (capacity, not length).
    /// Zero for a connection with nothing in flight.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // The server's flight goes out before anything more is read.
            ready!(self.poll_send_outgoing(cx))?;
            self.check_failed()?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_receive(cx, None))?;
        }
    }

    /// Fail with the connection's earlier failure, if it had one.
    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    /// Remember a failure; later reads and writes report it too.
    fn fail(&mut self, error: io::Error) -> io::Error {
        self.failed = Some((error.kind(), error.to_string()));
        error
    }

    /// Read once from the socket and process what arrived: plaintext into
    /// `dst` (what does not fit into `plain`), handshake messages and
    /// alerts into `outgoing`.
    fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        mut dst: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let kept = self.incoming.len();
            if scratch.len() < kept + MIN_READ {
                scratch.resize(kept + MIN_READ, 0);
            }
            scratch[..kept].copy_from_slice(&self.incoming);
            let mut read = ReadBuf::new(&mut scratch[kept..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let got = read.filled().len();
            if got == 0 {
                // End of file without close_notify: the stream may have
                // been cut short, as rustls' own reader reports it.
                self.read_closed = true;
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without sending TLS close_notify",
                );
                return Poll::Ready(Err(self.fail(error)));
            }
            let filled = kept + got;
            let processed = process(
                &mut self.conn,
                &mut scratch[..filled],
                &mut dst,
                &mut self.plain,
                &mut self.outgoing,
            );
            let (consumed, result) = match processed {
                Ok((consumed, result)) => (consumed, Ok(result)),
                Err((consumed, error)) => (consumed, Err(error)),
            };
            self.incoming.clear();
            if consumed < filled {
                self.incoming.extend_from_slice(&scratch[consumed..filled]);
            } else {
                self.incoming = Vec::new();
            }
            match result {
                Ok(Processed::PeerClosed) => self.read_closed = true,
                Ok(Processed::NeedData) if self.incoming.len() > MAX_PENDING => {
                    let error = invalid_data("a TLS message larger than any rustls accepts");
                    return Poll::Ready(Err(self.fail(error)));
                }
                Ok(Processed::NeedData) => {}
                Err(error) => {
                    // rustls queued an alert telling the peer why: best
                    // effort, it goes out now if the socket takes it.
                    let _ = self.poll_send_outgoing(cx);
                    return Poll::Ready(Err(self.fail(error)));
                }
            }
            Poll::Ready(Ok(()))
        })
    }

    /// Write `outgoing` to the socket until it is empty (then free it).
    fn poll_send_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_at < self.outgoing.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.outgoing_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_at += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
        }
        self.outgoing_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypt `data` (or a close_notify, for `None`) and send it or keep
    /// it in `outgoing`. Returns the plaintext bytes taken.
    fn seal(&mut self, cx: &mut Context<'_>, data: Option<&[u8]>) -> io::Result<usize> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let taken = data.map_or(0, |d| d.len().min(MAX_WRITE));
            let sealed = loop {
                // The leftover of a partial record is passed again: rustls
                // may be in the middle of joining a handshake message there.
                let UnbufferedStatus { discard, state } =
                    self.conn.process_tls_records(&mut self.incoming);
                let step = match state {
                    Err(error) => Err(invalid_data(error)),
                    Ok(ConnectionState::WriteTraffic(mut traffic)) => match data {
                        Some(d) => {
                            fill(&mut scratch, |out| traffic.encrypt(&d[..taken], out)).map(Some)
                        }
                        None => fill(&mut scratch, |out| traffic.queue_close_notify(out)).map(Some),
                    },
                    // A key update (ours, in answer to the peer's) goes
                    // out before what is encrypted under the new key.
                    Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                        append(&mut self.outgoing, |out| encode.encode(out)).map(|()| None)
                    }
                    Ok(ConnectionState::TransmitTlsData(transmit)) => {
                        transmit.done();
                        Ok(None)
                    }
                    Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                        let mut outcome = Ok(None);
                        while let Some(record) = traffic.next_record() {
                            match record {
                                Ok(record) => self.plain.extend_from_slice(record.payload),
                                Err(error) => {
                                    outcome = Err(invalid_data(error));
                                    break;
                                }
                            }
                        }
                        outcome
                    }
                    Ok(ConnectionState::PeerClosed) => {
                        self.read_closed = true;
                        Ok(None)
                    }
                    Ok(ConnectionState::Closed) => Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS connection is closed",
                    )),
                    Ok(other) => Err(io::Error::other(format!(
                        "cannot write in TLS state {other:?}"
                    ))),
                };
                self.incoming.drain(..discard);
                if let Some(sealed) = step? {
                    break sealed;
                }
            };
            if self.incoming.is_empty() && self.incoming.capacity() > 0 {
                self.incoming = Vec::new();
            }
            let mut sent = 0;
            if self.outgoing.is_empty() {
                // The common case: straight from the scratch buffer.
                while sent < sealed {
                    match Pin::new(&mut self.io).poll_write(cx, &scratch[sent..sealed]) {
                        Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Poll::Ready(Ok(n)) => sent += n,
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => break,
                    }
                }
            }
            // Encrypted means committed: what the socket did not take now
            // is kept and sent before anything else.
            self.outgoing.extend_from_slice(&scratch[sent..sealed]);
            Ok(taken)
        })
    }
}

/// Process the records in `buf`. Returns the bytes consumed (to drop from
/// the front of `buf`), with the error if processing failed.
fn process(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    dst: &mut Option<&mut ReadBuf<'_>>,
    plain: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
) -> Result<(usize, Processed), (usize, io::Error)> {
    let mut consumed = 0;
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut buf[consumed..]);
        let state = match state {
            Ok(state) => state,
            Err(error) => {
                queue_alerts(conn, &mut buf[consumed + discard..], outgoing);
                return Err((consumed + discard, invalid_data(error)));
            }
        };
        match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = match record {
                        Ok(record) => record,
                        Err(error) => return Err((consumed + discard, invalid_data(error))),
                    };
                    discard += record.discard;
                    deliver(record.payload, dst, plain);
                }
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                if let Err(error) = append(outgoing, |out| encode.encode(out)) {
                    return Err((consumed + discard, error));
                }
            }
            // Sent by the next write of `outgoing`, before anything
            // encrypted after it.
            ConnectionState::TransmitTlsData(transmit) => transmit.done(),
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Ok((consumed + discard, Processed::PeerClosed));
            }
            ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                return Ok((consumed + discard, Processed::NeedData));
            }
            // The server's config never accepts early (0-RTT) data.
            other => {
                let error = invalid_data(format!("unexpected TLS state {other:?}"));
                return Err((consumed + discard, error));
            }
        }
        consumed += discard;
    }
}

/// After a failure, rustls has queued the alert that says why: encode it.
/// Only while something is queued: rustls hands queued records out before
/// it looks at `rest` again, whereas a call with nothing queued would
/// process the offending bytes a second time.
fn queue_alerts(conn: &mut UnbufferedServerConnection, rest: &mut [u8], outgoing: &mut Vec<u8>) {
    while conn.wants_write() {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(rest);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                if append(outgoing, |out| encode.encode(out)).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Plaintext to the reader's buffer; what does not fit is kept in `plain`.
fn deliver(payload: &[u8], dst: &mut Option<&mut ReadBuf<'_>>, plain: &mut Vec<u8>) {
    let direct = match dst {
        Some(dst) if plain.is_empty() => {
            let n = dst.remaining().min(payload.len());
            dst.put_slice(&payload[..n]);
            n
        }
        _ => 0,
    };
    plain.extend_from_slice(&payload[direct..]);
}

/// What rustls' encode and encrypt calls say when the buffer is too small.
trait TooSmall {
    fn required(&self) -> Option<usize>;
    fn into_io(self) -> io::Error;
}

impl TooSmall for EncodeError {
    fn required(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            EncodeError::AlreadyEncoded => None,
        }
    }
    fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

impl TooSmall for EncryptError {
    fn required(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
    fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// Run `write` on the front of `buf`, growing it until it fits. Returns the
/// bytes written.
fn fill<E: TooSmall>(
    buf: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<usize> {
    loop {
        match write(buf) {
            Ok(n) => return Ok(n),
            Err(e) => match e.required() {
                Some(required) if required > buf.len() => buf.resize(required, 0),
                _ => return Err(e.into_io()),
            },
        }
    }
}

/// Run `write` on new space at the end of `out`, keeping what it wrote.
fn append<E: TooSmall>(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match e.required() {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(e.into_io());
                }
            },
        }
    }
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl<IO> AsyncRead for ServerTlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            this.check_failed()?;
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Answers rustls owes the peer (a key update) go out first;
            // a full socket does not hold up reading.
            if this.outgoing_at < this.outgoing.len()
                && let Poll::Ready(Err(e)) = this.poll_send_outgoing(cx)
            {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            ready!(this.poll_receive(cx, Some(buf)))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO> AsyncWrite for ServerTlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_failed()?;
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection was shut down for writing",
            )));
        }
        // At most one write is kept: the next waits until it is sent.
        ready!(this.poll_send_outgoing(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match this.seal(cx, Some(data)) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(this.fail(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed && this.failed.is_none() {
            ready!(this.poll_send_outgoing(cx))?;
            this.write_closed = true;
            // A close_notify the state does not allow (the peer is gone)
            // is skipped: the socket is closed all the same.
            let _ = this.seal(cx, None);
        }
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, HandshakeKind, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    struct Pair {
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    }

    fn configs(version: &'static rustls::SupportedProtocolVersion) -> Pair {
        let (cert, key) = sluice_tls::self_signed(&["localhost"]).unwrap();
        let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut server = ServerConfig::builder_with_provider(Arc::new(sluice_tls::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(Arc::new(sluice_tls::provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pair {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }

    /// A loopback listener, and a task running `serve` with it and the
    /// server's config.
    fn serving<T, F>(
        pair: &Pair,
        serve: impl FnOnce(TcpListener, Arc<ServerConfig>) -> F,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<T>)
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let l = TcpListener::from_std(l).unwrap();
        (addr, tokio::spawn(serve(l, pair.server.clone())))
    }

    /// The next connection on `l`, through the TLS handshake.
    async fn next(
        l: &TcpListener,
        server: Arc<ServerConfig>,
    ) -> io::Result<ServerTlsStream<TcpStream>> {
        let (tcp, _) = l.accept().await.unwrap();
        accept(server, tcp).await
    }

    /// A server whose first handshake must fail (its error is the task's
    /// output) and which then echoes for the next client.
    fn refusing_then_serving(
        pair: &Pair,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<io::Error>) {
        serving(pair, |l, server| async move {
            let refused = next(&l, server.clone()).await.err().unwrap();
            let s = next(&l, server).await.unwrap();
            echo(s, 4096).await;
            refused
        })
    }

    /// A well-behaved client connects and its bytes come back.
    async fn an_honest_client_is_served(pair: &Pair, addr: std::net::SocketAddr) {
        let mut c = connect(pair, addr).await;
        c.write_all(b"honest").await.unwrap();
        let mut back = [0; 6];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"honest");
        c.shutdown().await.unwrap();
    }

    async fn connect(pair: &Pair, addr: std::net::SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(pair.client.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Echo everything back in reads of `chunk` bytes until end of file,
    /// then close; returns what the stream held when it was idle between
    /// messages (the largest capacity seen after a flush).
    async fn echo(mut s: ServerTlsStream<TcpStream>, chunk: usize) -> usize {
        let mut buf = vec![0; chunk];
        let mut held_when_idle = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
            s.flush().await.unwrap();
            held_when_idle = held_when_idle.max(s.buffered_capacity() - s.plain.capacity());
        }
        s.shutdown().await.unwrap();
        held_when_idle
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn data_goes_both_ways_intact_in_tls_1_3_and_1_2_and_closes_cleanly() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let pair = configs(version);
            let (addr, task) = serving(&pair, |l, server| async move {
                let s = next(&l, server).await.unwrap();
                echo(s, 100).await
            });
            let mut c = connect(&pair, addr).await;
            assert_eq!(c.get_ref().1.protocol_version(), Some(version.version));
            // Many small messages, then one larger than a record.
            for i in 0..50 {
                let msg = format!("message {i}");
                c.write_all(msg.as_bytes()).await.unwrap();
                let mut back = vec![0; msg.len()];
                c.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg.as_bytes());
            }
            let big = pattern(300_000);
            let (mut r, mut w) = tokio::io::split(c);
            let sent = big.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert_eq!(back.len(), big.len());
            assert!(back == big, "the echo differs from what was sent");
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_between_messages_holds_no_buffer() {
        let pair = configs(&rustls::version::TLS13);
        let (addr, task) = serving(&pair, |l, server| async move {
            let mut s = next(&l, server).await.unwrap();
            let after_handshake = s.buffered_capacity();
            let mut buf = [0; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(&buf[..n]).await.unwrap();
            s.flush().await.unwrap();
            (after_handshake, s.buffered_capacity(), s)
        });
        let mut c = connect(&pair, addr).await;
        c.write_all(b"{\"route\":\"echo\"}").await.unwrap();
        let mut back = [0; 16];
        c.read_exact(&mut back).await.unwrap();
        let (after_handshake, after_message, _s) = task.await.unwrap();
        assert_eq!(after_handshake, 0, "buffers held after the handshake");
        assert_eq!(after_message, 0, "buffers held after a message");
    }

    #[tokio::test]
    async fn what_a_slow_reader_does_not_take_is_kept_then_released() {
        let pair = configs(&rustls::version::TLS13);
        let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
        let (addr, task) = serving(&pair, |l, server| async move {
            let mut s = next(&l, server).await.unwrap();
            let block = pattern(64 * 1024);
            let mut sent = 0;
            // Write until the socket stops taking (the client reads nothing).
            loop {
                let w = tokio::time::timeout(Duration::from_millis(300), s.write(&block)).await;
                match w {
                    Ok(n) => sent += n.unwrap(),
                    Err(_) => break,
                }
            }
            stalled_tx.send(s.buffered_capacity()).unwrap();
            s.flush().await.unwrap();
            let released = s.buffered_capacity();
            s.shutdown().await.unwrap();
            (sent, released)
        });
        let mut c = connect(&pair, addr).await;
        let held = stalled_rx.await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        let (sent, released) = task.await.unwrap();
        assert!(held > 0, "a stalled write keeps its ciphertext");
        assert!(
            held <= MAX_WRITE + 4 * 64,
            "at most one write is kept: {held}"
        );
        assert_eq!(released, 0, "sent, then released");
        assert_eq!(got.len(), sent, "nothing lost, nothing twice");
    }

    use std::time::Duration;

    #[tokio::test]
    async fn a_second_connection_resumes_with_the_ticket_of_the_first() {
        let pair = configs(&rustls::version::TLS13);
        let (addr, task) = serving(&pair, |l, server| async move {
            for _ in 0..2 {
                let s = next(&l, server.clone()).await.unwrap();
                echo(s, 4096).await;
            }
        });
        for expected in [HandshakeKind::Full, HandshakeKind::Resumed] {
            let mut c = connect(&pair, addr).await;
            c.write_all(b"hi").await.unwrap();
            let mut back = [0; 2];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(c.get_ref().1.handshake_kind(), Some(expected));
            c.shutdown().await.unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
        }
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let pair = configs(&rustls::version::TLS13);
        let (addr, task) = serving(&pair, |l, server| async move {
            let s = next(&l, server).await.unwrap();
            echo(s, 4096).await;
        });
        let mut c = connect(&pair, addr).await;
        for round in 0..3 {
            c.get_mut().1.refresh_traffic_keys().unwrap();
            let msg = format!("after key update {round}");
            c.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0; msg.len()];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg.as_bytes());
        }
        c.shutdown().await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_plaintext_client_gets_an_alert_and_the_next_client_is_served() {
        let pair = configs(&rustls::version::TLS13);
        let (addr, task) = refusing_then_serving(&pair);
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET /ws/demo HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer).await;
        assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");

        an_honest_client_is_served(&pair, addr).await;
        let refused = task.await.unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
    }

    #[tokio::test]
    async fn a_handshake_message_over_rustls_limit_is_refused_and_the_next_client_is_served() {
        let pair = configs(&rustls::version::TLS13);
        let (addr, task) = refusing_then_serving(&pair);
        // A ClientHello that says it is 16 MiB long, then records of it:
        // nothing is kept waiting for the rest.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let mut hello = vec![22, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff];
        hello.resize(5 + 0x4000, 0);
        let _ = raw.write_all(&hello).await;
        for _ in 0..8 {
            let mut more = vec![22, 3, 1, 0x40, 0x00];
            more.resize(5 + 0x4000, 0);
            if raw.write_all(&more).await.is_err() {
                break;
            }
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
            .await
            .unwrap();
        // The connection is closed (the alert rustls queued may be lost to
        // the reset that the bytes still in flight cause).
        assert!(answer.len() < 64, "{answer:?}");

        an_honest_client_is_served(&pair, addr).await;
        // Refused by rustls, not by a panic in the stream.
        let refused = task.await.unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
        assert!(
            refused.to_string().contains("HandshakePayloadTooLarge"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_socket_closed_without_close_notify_is_an_unexpected_end() {
        let pair = configs(&rustls::version::TLS13);
        let (addr, task) = serving(&pair, |l, server| async move {
            let mut s = next(&l, server).await.unwrap();
            let mut buf = [0; 64];
            let first = s.read(&mut buf).await.unwrap();
            let cut = s.read(&mut buf).await.err().unwrap();
            let again = s.read(&mut buf).await.err().unwrap();
            (first, cut.kind(), again.kind())
        });
        let mut c = connect(&pair, addr).await;
        c.write_all(b"last words").await.unwrap();
        c.flush().await.unwrap();
        // Close the TCP socket under the TLS session: no close_notify.
        let (tcp, _) = c.into_inner();
        drop(tcp);
        let (first, cut, again) = task.await.unwrap();
        assert_eq!(first, 10);
        assert_eq!(cut, io::ErrorKind::UnexpectedEof);
        assert_eq!(again, io::ErrorKind::UnexpectedEof, "the failure sticks");
    }

    #[tokio::test]
    async fn a_client_that_closes_during_the_handshake_fails_it() {
        let pair = configs(&rustls::version::TLS13);
        let (addr, task) = serving(&pair, |l, server| async move {
            next(&l, server).await.err().unwrap()
        });
        let mut raw = TcpStream::connect(addr).await.unwrap();
        // The first bytes of a ClientHello record, then nothing.
        raw.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
        drop(raw);
        let e = task.await.unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}
