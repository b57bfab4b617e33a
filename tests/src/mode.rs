//! Which of Bascule's request paths a test's connections take: every behaviour is checked on
//! both.

/// One of Bascule's two request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default: GET/HEAD without a body on the fast path, the rest handed over.
    Fast,
    /// `[server] fast_path = false`: everything through Pingora's full proxy.
    Full,
}

/// Both paths, fast first.
pub const MODES: [Mode; 2] = [Mode::Fast, Mode::Full];

impl Mode {
    /// The `[server]` lines that select this path.
    pub fn server(self) -> String {
        match self {
            Mode::Fast => String::new(),
            Mode::Full => "fast_path = false\n".into(),
        }
    }

    /// `fast` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Full => "full",
        }
    }
}
