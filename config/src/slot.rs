//! The two slot names.

use std::fmt;
use std::str::FromStr;

/// One of the two deployment slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotName {
    /// The blue slot.
    Blue,
    /// The green slot.
    Green,
}

impl SlotName {
    /// Both slots, blue first.
    pub const ALL: [SlotName; 2] = [SlotName::Blue, SlotName::Green];

    /// The lower-case name, as used in config, admin commands and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            SlotName::Blue => "blue",
            SlotName::Green => "green",
        }
    }

    /// The other slot.
    pub const fn other(self) -> SlotName {
        match self {
            SlotName::Blue => SlotName::Green,
            SlotName::Green => SlotName::Blue,
        }
    }

    /// 0 for blue, 1 for green: an index into per-slot arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths and alignment (`{:<6}`) line up tables.
        f.pad(self.as_str())
    }
}

/// A slot name that is neither `blue` nor `green`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown slot `{0}`: expected `blue` or `green`")]
pub struct UnknownSlot(pub String);

impl FromStr for SlotName {
    type Err = UnknownSlot;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(SlotName::Blue),
            "green" => Ok(SlotName::Green),
            other => Err(UnknownSlot(other.to_string())),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SlotName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for SlotName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
