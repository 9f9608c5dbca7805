//! riverbank's cryptography, with no I/O (the key store, the key file and the CLI live elsewhere):
//!
//! - [`field`]: AES-256-GCM envelopes for single fields of personal or sensitive financial data.
//! - [`keys`]: data keys per (tenant, subject, data class), wrapped by key-encryption keys per data
//!   class; the key ring and the `KeyWrapper` interface a KMS or Vault can implement.
//! - [`mask`] and [`pseudonym`]: what readers without the right to decrypt see, and the keyed ids the
//!   analytics store holds instead of identifiers.
//! - [`merkle`]: RFC 6962 Merkle tree heads, compact ranges and inclusion proofs for the audit trail.
//! - [`sign`]: Ed25519 signing and verification of audit checkpoints under key ids.
#![forbid(unsafe_code)]

pub mod field;
pub mod keys;
pub mod mask;
pub mod merkle;
pub mod pseudonym;
pub mod sign;
