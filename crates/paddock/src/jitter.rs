//! A number in [0, 1) that differs from call to call: spreads restarts and
//! recycles in time, so that a service's workers do not all move at once, and
//! tells errors apart (error ids). Not for secrets: the operator token comes from
//! `paddock_sys::random_bytes`.

/// A pseudo-random number in [0, 1).
pub fn unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_unit_is_in_range_and_varies() {
        let xs: Vec<f64> = (0..32).map(|_| super::unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }
}
