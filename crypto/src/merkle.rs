//! RFC 6962 / RFC 9162 §2.1 Merkle trees over SHA-256, for the audit trail's tree heads.
//!
//! - Leaves are hashed as `SHA-256(0x00 || data)` and interior nodes as `SHA-256(0x01 || left || right)`,
//!   so a leaf can never be passed off as a node (second-preimage resistance, RFC 9162 §2.1.1).
//! - The tree head of `n` leaves splits at the largest power of two below `n` (not the midpoint); the
//!   empty tree's head is `SHA-256()` of nothing.
//! - [`CompactRange`] keeps the roots of the perfect subtrees of a growing log (at most 64 hashes for a
//!   log of up to 2^64 − 1 leaves), so a processor appends a leaf and reads the head without holding
//!   the leaves.
//! - Inclusion (§2.1.3) and consistency (§2.1.4) proofs are generated from the leaf hashes and verified
//!   with the RFC's own iterative algorithms, so a client with the signed tree head alone can check them.
//!
//! The test vectors are Certificate Transparency's (the RFC 6962 reference leaves, tree heads and proofs).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, a node hash or a tree head.
pub type Hash = [u8; 32];

/// The most hashes a [`CompactRange`] holds: one per set bit of a `u64` size.
pub const COMPACT_RANGE_HASHES_MAX: usize = 64;

/// `SHA-256(0x00 || data)`: the hash of one leaf (RFC 9162 §2.1.1).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node (RFC 9162 §2.1.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `SHA-256()` of nothing: the head of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (`n >= 2`): where RFC 6962 splits a tree of `n` leaves.
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    let k = n.next_power_of_two();
    if k == n {
        n / 2
    } else {
        k / 2
    }
}

/// The Merkle Tree Hash (MTH) of a list of leaf hashes (RFC 9162 §2.1.1).
///
/// Computed bottom-up in one pass with a stack of at most 64 perfect-subtree roots, the same way
/// [`CompactRange`] does, so it needs no recursion and no copy of the leaves.
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    let mut range = CompactRange::new();
    for leaf in leaf_hashes {
        range.push(*leaf);
    }
    range.root()
}

/// MTH by the RFC's recursive definition; proofs are built from it (sizes are bounded by the slice).
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// The roots of the perfect subtrees that make up a log of `size` leaves, left to right (largest
/// first): a "compact range" `[0, size)`. Appending a leaf merges equal-sized subtrees like a binary
/// counter; the tree head folds the roots right to left.
///
/// It lives in processor state, so it serializes as `{ "size": n, "hashes": ["<hex>", ...] }` and
/// deserializing checks that there is exactly one hash per set bit of `size`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CompactRangeRepr", into = "CompactRangeRepr")]
pub struct CompactRange {
    size: u64,
    /// One root per set bit of `size`, highest bit first.
    hashes: Vec<Hash>,
}

impl std::fmt::Debug for CompactRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactRange")
            .field("size", &self.size)
            .field("root", &hex::encode(self.root()))
            .finish()
    }
}

impl Default for CompactRange {
    fn default() -> Self {
        Self::new()
    }
}

impl CompactRange {
    /// The empty log.
    pub fn new() -> Self {
        Self { size: 0, hashes: Vec::new() }
    }

    /// Appends one leaf hash (from [`leaf_hash`]).
    ///
    /// # Panics
    /// When the log already holds `u64::MAX` leaves (never reached in practice; a wrapped size would
    /// silently produce wrong tree heads).
    pub fn push(&mut self, leaf_hash: Hash) {
        let size = self.size.checked_add(1).expect("a compact range holds at most u64::MAX leaves");
        let mut carry = leaf_hash;
        // Each trailing one bit of the old size is a subtree of the same height as `carry`: merge.
        let mut merges = self.size.trailing_ones();
        while merges > 0 {
            let left = self.hashes.pop().expect("one hash per set bit of the size");
            carry = node_hash(&left, &carry);
            merges -= 1;
        }
        self.hashes.push(carry);
        self.size = size;
        debug_assert_eq!(self.hashes.len(), self.size.count_ones() as usize);
    }

    /// The number of leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree head of all leaves pushed: equal to [`root`] of the same leaf hashes.
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        match hashes.next() {
            None => empty_root(),
            Some(last) => hashes.fold(*last, |right, left| node_hash(left, &right)),
        }
    }

    /// The perfect-subtree roots, largest first (one per set bit of [`Self::size`]).
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }
}

/// The serialized form of a [`CompactRange`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactRangeRepr {
    size: u64,
    hashes: Vec<String>,
}

impl From<CompactRange> for CompactRangeRepr {
    fn from(range: CompactRange) -> Self {
        Self { size: range.size, hashes: range.hashes.iter().map(hex::encode).collect() }
    }
}

impl TryFrom<CompactRangeRepr> for CompactRange {
    type Error = MerkleError;

    fn try_from(repr: CompactRangeRepr) -> Result<Self, Self::Error> {
        let want = repr.size.count_ones() as usize;
        if repr.hashes.len() != want {
            return Err(MerkleError::CompactRangeShape { size: repr.size, hashes: repr.hashes.len(), want });
        }
        let hashes = repr.hashes.iter().map(|h| parse_hash(h)).collect::<Result<Vec<_>, _>>()?;
        debug_assert!(hashes.len() <= COMPACT_RANGE_HASHES_MAX);
        Ok(Self { size: repr.size, hashes })
    }
}

/// What is wrong with a proof request or a serialized hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("leaf index {index} is not in a tree of {tree_size} leaves")]
    IndexOutOfRange { index: u64, tree_size: u64 },
    #[error("old tree size {old_size} is larger than the tree's {tree_size} leaves")]
    OldSizeTooLarge { old_size: u64, tree_size: u64 },
    #[error("a compact range of size {size} has {hashes} hashes, and must have {want} (one per set bit)")]
    CompactRangeShape { size: u64, hashes: usize, want: usize },
    #[error("a hash must be 64 hex digits (32 bytes)")]
    BadHash,
}

/// Parses a 64-hex-digit SHA-256 digest.
pub fn parse_hash(hex_digits: &str) -> Result<Hash, MerkleError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).map_err(|_| MerkleError::BadHash)?;
    Ok(out)
}

/// The audit path of leaf `index` in the tree of all `leaf_hashes` (RFC 9162 §2.1.3.1, `PATH(m, D_n)`),
/// from the leaf's sibling up to the root's child. Verify with [`verify_inclusion`].
pub fn inclusion_proof(leaf_hashes: &[Hash], index: u64) -> Result<Vec<Hash>, MerkleError> {
    let tree_size = leaf_hashes.len() as u64;
    let m = usize::try_from(index)
        .ok()
        .filter(|m| *m < leaf_hashes.len())
        .ok_or(MerkleError::IndexOutOfRange { index, tree_size })?;
    let mut proof = Vec::new();
    path(m, leaf_hashes, &mut proof);
    Ok(proof)
}

/// `PATH(m, D[n])`, appending bottom-up (the recursion emits the deepest sibling first).
fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(mth(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(mth(&leaves[..k]));
    }
}

/// Whether `proof` shows that `leaf_hash` is leaf `index` of the tree of `tree_size` leaves whose head
/// is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf_hash: &Hash, index: u64, tree_size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= tree_size {
        return false;
    }
    let mut fn_ = index;
    let mut sn = tree_size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// The consistency proof between the tree of the first `old_size` leaves and the tree of all
/// `leaf_hashes` (RFC 9162 §2.1.4.1, `PROOF(m, D_n)`). Empty when `old_size` is 0 or the whole tree.
/// Verify with [`verify_consistency`].
pub fn consistency_proof(leaf_hashes: &[Hash], old_size: u64) -> Result<Vec<Hash>, MerkleError> {
    let tree_size = leaf_hashes.len() as u64;
    let m = usize::try_from(old_size)
        .ok()
        .filter(|m| *m <= leaf_hashes.len())
        .ok_or(MerkleError::OldSizeTooLarge { old_size, tree_size })?;
    let mut proof = Vec::new();
    if m > 0 {
        subproof(m, leaf_hashes, true, &mut proof);
    }
    Ok(proof)
}

/// `SUBPROOF(m, D[n], b)`, appending bottom-up.
fn subproof(m: usize, leaves: &[Hash], b: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !b {
            out.push(mth(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], b, out);
        out.push(mth(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(mth(&leaves[..k]));
    }
}

/// Whether `proof` shows that the tree of `old_size` leaves with head `old_root` is a prefix of the
/// tree of `new_size` leaves with head `new_root` (RFC 9162 §2.1.4.2): a later checkpoint extends an
/// earlier one and rewrote nothing before it.
///
/// Equal sizes need an empty proof and equal heads; an empty old tree is a prefix of every tree (the
/// proof must be empty and `old_root` the empty tree's head).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    // RFC 9162 §2.1.4.2, steps 1–7.
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        parse_hash(s).unwrap()
    }

    /// Certificate Transparency's reference leaves (RFC 6962 test data).
    const CT_LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

    /// Tree heads for sizes 0..=8 over [`CT_LEAVES`].
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_leaf_hashes() -> Vec<Hash> {
        CT_LEAVES.iter().map(|l| leaf_hash(&hex::decode(l).unwrap())).collect()
    }

    /// The RFC's recursive MTH, written independently of [`mth`] (split found by a loop).
    fn naive_root(leaves: &[Hash]) -> Hash {
        if leaves.is_empty() {
            return Sha256::digest(b"").into();
        }
        if leaves.len() == 1 {
            return leaves[0];
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        let left = naive_root(&leaves[..k]);
        let right = naive_root(&leaves[k..]);
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(left);
        h.update(right);
        h.finalize().into()
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("record-{i}").as_bytes())).collect()
    }

    #[test]
    fn tree_heads_match_the_rfc_6962_reference_for_sizes_0_to_8() {
        let leaves = ct_leaf_hashes();
        assert_eq!(empty_root(), h(CT_ROOTS[0]));
        for (size, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(root(&leaves[..size])), *want, "size {size}");
            let mut range = CompactRange::new();
            leaves[..size].iter().for_each(|l| range.push(*l));
            assert_eq!(hex::encode(range.root()), *want, "compact range size {size}");
        }
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        assert_eq!(leaf_hash(b""), h(CT_ROOTS[1]));
        assert_eq!(leaf_hash(&[0x00]), h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"));
        let [a, b] = [leaf_hash(b"a"), leaf_hash(b"b")];
        let mut concat = Vec::new();
        concat.extend_from_slice(&a);
        concat.extend_from_slice(&b);
        assert_ne!(node_hash(&a, &b), leaf_hash(&concat));
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
    }

    #[test]
    fn inclusion_proofs_match_the_rfc_6962_reference() {
        let leaves = ct_leaf_hashes();
        let cases: [(u64, [&str; 3]); 2] = [
            (
                0,
                [
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                [
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(inclusion_proof(&leaves, index).unwrap(), want, "leaf {index}");
            assert!(verify_inclusion(&leaves[index as usize], index, 8, &want, &h(CT_ROOTS[8])));
        }
    }

    #[test]
    fn consistency_proofs_match_the_rfc_6962_reference() {
        let leaves = ct_leaf_hashes();
        let cases: [(u64, &[&str]); 2] = [
            (
                2,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(consistency_proof(&leaves, old).unwrap(), want, "{old} -> 8");
            assert!(verify_consistency(old, 8, &h(CT_ROOTS[old as usize]), &h(CT_ROOTS[8]), &want));
        }
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let leaves = leaves(5);
        assert_eq!(inclusion_proof(&leaves, 5), Err(MerkleError::IndexOutOfRange { index: 5, tree_size: 5 }));
        assert!(inclusion_proof(&[], 0).is_err());
        assert_eq!(
            consistency_proof(&leaves, 6),
            Err(MerkleError::OldSizeTooLarge { old_size: 6, tree_size: 5 })
        );
        assert_eq!(consistency_proof(&leaves, 5).unwrap(), Vec::<Hash>::new());
        assert_eq!(consistency_proof(&leaves, 0).unwrap(), Vec::<Hash>::new());
    }

    #[test]
    fn roots_compact_ranges_and_proofs_agree_with_the_naive_mth_for_sizes_0_to_300() {
        let all = leaves(300);
        let mut range = CompactRange::new();
        let mut roots = vec![naive_root(&[])];
        assert_eq!(range.root(), roots[0]);
        for n in 1..=300 {
            range.push(all[n - 1]);
            let want = naive_root(&all[..n]);
            roots.push(want);
            assert_eq!(range.size(), n as u64);
            assert_eq!(range.hashes().len(), (n as u64).count_ones() as usize);
            assert_eq!(range.root(), want, "compact range, size {n}");
            assert_eq!(root(&all[..n]), want, "root, size {n}");
        }
        // Every leaf's inclusion proof in every tree size verifies, and not under a neighbour's
        // index, leaf or the previous tree's head. (A head alone does not commit to its size: leaf 0's
        // path in 3 leaves also "verifies" for size 4 against the same head. That is why a checkpoint
        // signs the size together with the head.)
        for n in 1..=300usize {
            let tree = &all[..n];
            for i in (0..n).step_by(if n > 100 { 7 } else { 1 }) {
                let proof = inclusion_proof(tree, i as u64).unwrap();
                let (i64_, n64) = (i as u64, n as u64);
                assert!(verify_inclusion(&tree[i], i64_, n64, &proof, &roots[n]), "{i}/{n}");
                assert!(!verify_inclusion(&tree[i], i64_, n64, &proof, &roots[n - 1]));
                if n > 1 {
                    let other = (i + 1) % n;
                    assert!(!verify_inclusion(&tree[other], i64_, n64, &proof, &roots[n]));
                    assert!(!verify_inclusion(&tree[i], other as u64, n64, &proof, &roots[n]));
                }
                assert!(!verify_inclusion(&tree[i], n64, n64, &proof, &roots[n]));
            }
        }
        // Every consistency proof between sizes (sampled above 64) verifies and binds both heads.
        for n in 0..=300usize {
            for m in 0..=n {
                if n > 64 && m % 13 != 0 && m != n && m != 1 {
                    continue;
                }
                let proof = consistency_proof(&all[..n], m as u64).unwrap();
                let (m64, n64) = (m as u64, n as u64);
                assert!(verify_consistency(m64, n64, &roots[m], &roots[n], &proof), "{m}->{n}");
                if m > 0 && m < n {
                    assert!(!verify_consistency(m64, n64, &roots[m], &roots[n - 1], &proof));
                    assert!(!verify_consistency(n64, m64, &roots[n], &roots[m], &proof));
                    assert!(!verify_consistency(m64, n64, &roots[m - 1], &roots[n], &proof));
                }
            }
        }
    }

    #[test]
    fn degenerate_consistency_cases() {
        let all = leaves(8);
        let r4 = root(&all[..4]);
        let r5 = root(&all[..5]);
        assert!(verify_consistency(4, 4, &r4, &r4, &[]));
        assert!(!verify_consistency(4, 4, &r4, &r5, &[]));
        assert!(!verify_consistency(4, 4, &r4, &r4, &[[0; 32]]));
        assert!(verify_consistency(0, 5, &empty_root(), &r5, &[]));
        assert!(!verify_consistency(0, 5, &r4, &r5, &[]));
        assert!(!verify_consistency(0, 5, &empty_root(), &r5, &[[0; 32]]));
        assert!(!verify_consistency(4, 5, &r4, &r5, &[]));
    }

    #[test]
    fn compact_range_round_trips_and_refuses_a_wrong_shape() {
        let mut range = CompactRange::new();
        for l in leaves(11) {
            range.push(l);
        }
        let json = serde_json::to_string(&range).unwrap();
        let back: CompactRange = serde_json::from_str(&json).unwrap();
        assert_eq!(back, range);
        assert_eq!(back.root(), range.root());

        let wrong = format!(r#"{{"size":12,"hashes":["{}"]}}"#, hex::encode([0u8; 32]));
        let err = serde_json::from_str::<CompactRange>(&wrong).unwrap_err();
        assert!(err.to_string().contains("must have 2"), "{err}");
        let bad_hex = r#"{"size":1,"hashes":["zz"]}"#;
        assert!(serde_json::from_str::<CompactRange>(bad_hex).is_err());
        assert!(serde_json::from_str::<CompactRange>(r#"{"size":0,"hashes":[]}"#)
            .unwrap()
            .eq(&CompactRange::new()));
    }

    proptest! {
        #[test]
        fn tampering_with_any_proof_hash_fails(n in 2usize..200, seed in any::<u64>(), byte in 0usize..32) {
            let all = leaves(n);
            let i = (seed as usize) % n;
            let mut proof = inclusion_proof(&all, i as u64).unwrap();
            let at = (seed as usize / n) % proof.len();
            proof[at][byte] ^= 1;
            prop_assert!(!verify_inclusion(&all[i], i as u64, n as u64, &proof, &root(&all)));
            let m = 1 + (seed as usize) % (n - 1);
            let mut cproof = consistency_proof(&all, m as u64).unwrap();
            let at = (seed as usize / n) % cproof.len();
            cproof[at][byte] ^= 1;
            prop_assert!(!verify_consistency(m as u64, n as u64, &root(&all[..m]), &root(&all), &cproof));
        }

        #[test]
        fn compact_range_equals_root_for_random_leaves(data in proptest::collection::vec(any::<Vec<u8>>(), 0..300)) {
            let hashes: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
            let mut range = CompactRange::new();
            hashes.iter().for_each(|h| range.push(*h));
            prop_assert_eq!(range.root(), naive_root(&hashes));
            prop_assert!(range.hashes().len() <= COMPACT_RANGE_HASHES_MAX);
        }
    }
}
