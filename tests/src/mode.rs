//! Which of Bascule's request paths a test's connections take: every behaviour is checked on
//! both.

/// One of Bascule's two request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default: GET/HEAD without a body on the fast path, the rest handed over.
    Fast,
    /// `[server] fast_path = false`: everything through Pingora's full proxy.
    Full,
    /// HTTP/1.1 over TLS on an https listener: the fast path over a TLS stream (and what it
    /// hands over, over TLS too).
    Tls,
}

/// Both paths, fast first.
pub const MODES: [Mode; 2] = [Mode::Fast, Mode::Full];

/// Both paths in the clear and the fast path over TLS: where a test speaks raw HTTP/1.1.
pub const PATHS: [Mode; 3] = [Mode::Fast, Mode::Full, Mode::Tls];

impl Mode {
    /// The `[server]` lines that select this path.
    pub fn server(self) -> String {
        match self {
            Mode::Fast | Mode::Tls => String::new(),
            Mode::Full => "fast_path = false\n".into(),
        }
    }

    /// `fast` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Full => "full",
            Mode::Tls => "tls",
        }
    }

    /// Whether clients reach this path over TLS.
    pub fn tls(self) -> bool {
        self == Mode::Tls
    }
}
