//! The bounded pass's mutation engine: small random edits of real inputs.
//!
//! It is not coverage-guided (libFuzzer is, in the long runs); it makes the edits that break
//! parsers most often: flipped bits, boundary integers in headers, cut, doubled and removed
//! runs, digits and signs in text, and splices of two seeds. Everything comes from a seeded
//! generator, so a pass with the same seed makes the same inputs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Integers that sit on the edges parsers get wrong.
const INTERESTING: [u32; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// Text that text formats (TOML, JSON, HTTP headers) treat specially.
const TOKENS: [&[u8]; 16] = [
    b"-1",
    b"0",
    b"18446744073709551616",
    b"1e309",
    b"NaN",
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b"\n",
    b"..",
    b"/",
    b"%",
    b"\xff",
];

/// A seeded generator of mutated inputs.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    /// A mutator whose inputs are fixed by `seed`.
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A new input: a copy of one of `corpus`'s, with 1 to 8 edits, at most `max_len` long.
    pub fn next(&mut self, corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
        let mut input = match corpus.len() {
            0 => Vec::new(),
            n => corpus[self.rng.random_range(0..n)].clone(),
        };
        let edits = 1 + self.rng.random_range(0..8u32);
        for _ in 0..edits {
            self.edit(&mut input, corpus);
        }
        input.truncate(max_len);
        input
    }

    fn position(&mut self, input: &[u8]) -> usize {
        self.rng.random_range(0..=input.len())
    }

    fn range(&mut self, input: &[u8]) -> (usize, usize) {
        let start = self.position(input);
        let longest = (input.len() - start).min(64);
        (start, start + self.rng.random_range(0..=longest))
    }

    fn edit(&mut self, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        match self.rng.random_range(0..9u32) {
            0 if !input.is_empty() => {
                let at = self.rng.random_range(0..input.len());
                input[at] ^= 1 << self.rng.random_range(0..8u32);
            }
            1 if !input.is_empty() => {
                let at = self.rng.random_range(0..input.len());
                input[at] = self.rng.random();
            }
            2 if input.len() >= 4 => {
                let value = INTERESTING[self.rng.random_range(0..INTERESTING.len())];
                let width = [1usize, 2, 4][self.rng.random_range(0..3usize)];
                let at = self.rng.random_range(0..=input.len() - width);
                let bytes = if self.rng.random() {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                let take = if self.rng.random() { 4 - width } else { 0 };
                input[at..at + width].copy_from_slice(&bytes[take..take + width]);
            }
            3 => {
                let (start, end) = self.range(input);
                input.drain(start..end);
            }
            4 => {
                let (start, end) = self.range(input);
                let copy = input[start..end].to_vec();
                let at = self.position(input);
                input.splice(at..at, copy);
            }
            5 => {
                let token = TOKENS[self.rng.random_range(0..TOKENS.len())];
                let at = self.position(input);
                input.splice(at..at, token.iter().copied());
            }
            6 => {
                let count = self.rng.random_range(1..16usize);
                let at = self.position(input);
                let bytes: Vec<u8> = (0..count).map(|_| self.rng.random()).collect();
                input.splice(at..at, bytes);
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[self.rng.random_range(0..corpus.len())];
                let at = self.position(input);
                let from = self.rng.random_range(0..=other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = self.position(input);
                input.truncate(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let corpus = vec![
            b"format_version = 1\nname = \"x\"\n".to_vec(),
            vec![0xff; 40],
        ];
        let mut a = Mutator::new(7);
        let mut b = Mutator::new(7);
        for _ in 0..200 {
            let input = a.next(&corpus, 64);
            assert!(input.len() <= 64);
            assert_eq!(input, b.next(&corpus, 64));
        }
    }
}
