//! Test-only: mangles a valid message a little (bytes that matter to its
//! grammar changed, inserted or removed, pieces repeated, the end cut off),
//! for the fuzz-style tests of the parsers that face the wire.

/// How a test mangles its messages.
pub struct Mangler {
    /// Bytes that matter to the grammar under test.
    pub spice: &'static [u8],
    /// At most this many edits per message (at least one).
    pub edits: usize,
    /// Longest piece repeated in place.
    pub piece: usize,
    /// A cut-off end is kept one time in this many (1: always).
    pub cut_one_in: u32,
}

impl Mangler {
    /// `seed` with between one and `edits` random edits, drawn from `rng`
    /// (a seeded one makes a failure reproducible).
    pub fn mangle(&self, rng: &mut impl rand::Rng, seed: &[u8]) -> Vec<u8> {
        let spice = |rng: &mut _| self.spice[rand::Rng::random_range(rng, 0..self.spice.len())];
        let mut v = seed.to_vec();
        for _ in 0..rng.random_range(1..=self.edits) {
            let at = rng.random_range(0..=v.len());
            match rng.random_range(0..5) {
                0 if at < v.len() => v[at] = spice(rng),
                1 => v.insert(at, spice(rng)),
                2 if at < v.len() => {
                    v.remove(at);
                }
                3 if self.cut_one_in == 1 || rng.random_range(0..self.cut_one_in) == 0 => {
                    v.truncate(at)
                }
                _ => {
                    let end = rng.random_range(at..=v.len().min(at + self.piece));
                    let piece = v[at..end].to_vec();
                    v.splice(at..at, piece);
                }
            }
        }
        v
    }
}
