//! Placeholder: the storage engine arrives with issue 5.
