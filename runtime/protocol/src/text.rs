//! Bounded text.

/// Cut `text` to at most `max` bytes on a character boundary, releasing
/// the memory past the cut.
pub fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.shrink_to_fit();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::truncate_utf8;

    #[test]
    fn truncation_keeps_whole_characters_and_frees_the_rest() {
        assert_eq!(truncate_utf8("héllo".to_owned(), 2), "h");
        assert_eq!(truncate_utf8("héllo".to_owned(), 3), "hé");
        assert_eq!(truncate_utf8("abc".to_owned(), 10), "abc");
        let cut = truncate_utf8("x".repeat(1 << 20), 16);
        assert!(cut.capacity() < 1024, "capacity {}", cut.capacity());
    }
}
