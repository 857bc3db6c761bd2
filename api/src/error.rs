//! Error kinds and the typed error both binaries report. The kinds are those of the reference
//! Backfill API, so that users who know it can map them; every message names what to fix.

use std::fmt;

use serde::{Deserialize, Serialize};

pub type Result<T, E = BackfillError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Milvus or object storage is unreachable, refuses the request, or returns no metadata.
    ConnectionError,
    /// The new-field data does not fit the collection (key type, names, nulls, duplicates).
    SchemaValidationError,
    /// A binlog or a source Parquet file cannot be read or decoded.
    DataReadError,
    /// A segment cannot be processed (planning cross-check failed, unsupported format).
    SegmentProcessingError,
    /// Writing an output or result object failed.
    WriteError,
    /// The Backfill document or the command line is invalid.
    ConfigError,
    // A kind this version does not know (written by a newer worker) reads as unexpected.
    #[serde(other)]
    UnexpectedError,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionError => "ConnectionError",
            Self::SchemaValidationError => "SchemaValidationError",
            Self::DataReadError => "DataReadError",
            Self::SegmentProcessingError => "SegmentProcessingError",
            Self::WriteError => "WriteError",
            Self::ConfigError => "ConfigError",
            Self::UnexpectedError => "UnexpectedError",
        }
    }

    /// Errors that another attempt with the same input cannot fix: the input must change.
    /// Planning stops for them, and a task whose segments all failed with them is not retried.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::ConfigError | Self::SchemaValidationError)
    }

    /// Process exit code per kind, so scripts and Job controllers can tell
    /// "fix your input" from "try again".
    pub fn exit_code(self) -> i32 {
        match self {
            k if k.is_permanent() => 3,
            Self::ConnectionError => 4,
            _ => 1,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackfillError {
    pub kind: ErrorKind,
    pub message: String,
    /// The segment concerned, when there is one.
    pub segment_id: Option<i64>,
    /// The object or file concerned, when there is one.
    pub path: Option<String>,
}

impl fmt::Display for BackfillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for BackfillError {}

impl BackfillError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            segment_id: None,
            path: None,
        }
    }
    pub fn connection(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ConnectionError, message)
    }
    pub fn schema(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::SchemaValidationError, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ConfigError, message)
    }
    pub fn unexpected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UnexpectedError, message)
    }
    pub fn data_read(path: impl Into<String>, message: impl fmt::Display) -> Self {
        let path = path.into();
        Self::new(ErrorKind::DataReadError, format!("{path}: {message}")).with_path(path)
    }
    pub fn segment(segment_id: i64, message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::SegmentProcessingError,
            format!("segment {segment_id}: {}", message.into()),
        )
        .with_segment(segment_id)
    }
    pub fn write(segment_id: Option<i64>, path: impl Into<String>, message: impl fmt::Display) -> Self {
        let path = path.into();
        let message = match segment_id {
            Some(id) => format!("segment {id}: writing {path}: {message}"),
            None => format!("writing {path}: {message}"),
        };
        Self {
            kind: ErrorKind::WriteError,
            message,
            segment_id,
            path: Some(path),
        }
    }
    pub fn with_segment(mut self, segment_id: i64) -> Self {
        self.segment_id = Some(segment_id);
        self
    }
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_input_errors_are_permanent() {
        let all = [
            ErrorKind::ConnectionError,
            ErrorKind::SchemaValidationError,
            ErrorKind::DataReadError,
            ErrorKind::SegmentProcessingError,
            ErrorKind::WriteError,
            ErrorKind::ConfigError,
            ErrorKind::UnexpectedError,
        ];
        let permanent: Vec<_> = all.into_iter().filter(|k| k.is_permanent()).collect();
        assert_eq!(permanent, [ErrorKind::SchemaValidationError, ErrorKind::ConfigError]);
        assert_eq!(ErrorKind::ConfigError.exit_code(), 3);
        assert_eq!(ErrorKind::ConnectionError.exit_code(), 4);
        assert_eq!(ErrorKind::WriteError.exit_code(), 1);
    }

    #[test]
    fn kinds_travel_as_their_names() {
        assert_eq!(serde_json::to_string(&ErrorKind::WriteError).unwrap(), "\"WriteError\"");
        let k: ErrorKind = serde_json::from_str("\"SchemaValidationError\"").unwrap();
        assert_eq!(k, ErrorKind::SchemaValidationError);
        let newer: ErrorKind = serde_json::from_str("\"SomethingNew\"").unwrap();
        assert_eq!(newer, ErrorKind::UnexpectedError);
        let e = BackfillError::segment(7, "bad");
        assert_eq!(e.to_string(), "SegmentProcessingError: segment 7: bad");
    }
}
