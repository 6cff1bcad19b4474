//! IPv4 addresses that fall inside given subnets, as whole tokens (the
//! boundaries of [`super::TokenKind::Ipv4`]). A clone's `scan` looks for
//! these: not only the addresses the rewrite map names, but any address of
//! the source's networks, such as a production host that is not part of the
//! environment and that no map could have listed.
//!
//! Like the matcher's needles, an address in a URL counts only in its
//! authority (`http://10.77.1.5/10.77.1.6` names one address).
//!
//! Only the dotted-quad spelling is recognised, like the matcher's IPv4
//! needles (no leading zeros, no shortened forms).

use super::{left_boundary, locate_lines, right_boundary, url_masks, LineMatch, MatcherError, TokenKind};
use std::net::Ipv4Addr;

/// One subnet, as the request spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Subnet {
    spelled: String,
    network: u32,
    mask: u32,
}

impl Subnet {
    fn parse(spelled: &str) -> Result<Subnet, MatcherError> {
        let invalid = || MatcherError::InvalidSubnet { subnet: spelled.to_owned() };
        let (address, prefix) = spelled.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u32 = prefix.parse().map_err(|_| invalid())?;
        if prefix > 32 {
            return Err(invalid());
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(Subnet { spelled: spelled.to_owned(), network: u32::from(address) & mask, mask })
    }

    fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask == self.network
    }
}

/// Finds addresses of any of a set of subnets.
#[derive(Debug, Clone)]
pub struct SubnetMatcher {
    subnets: Vec<Subnet>,
}

impl SubnetMatcher {
    pub fn new<I, S>(subnets: I) -> Result<Self, MatcherError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let subnets = subnets.into_iter().map(|s| Subnet::parse(s.as_ref())).collect::<Result<Vec<_>, _>>()?;
        if subnets.is_empty() {
            return Err(MatcherError::NoNeedles);
        }
        Ok(SubnetMatcher { subnets })
    }

    /// The subnets as given; a [`LineMatch::needle`] indexes this.
    pub fn subnets(&self) -> Vec<String> {
        self.subnets.iter().map(|s| s.spelled.clone()).collect()
    }

    /// Every address inside one of the subnets, with its line and column;
    /// `needle` is the index of the first subnet that holds it.
    pub fn find_lines(&self, text: &[u8]) -> Vec<LineMatch> {
        locate_lines(text, self.find_iter(text))
    }

    /// `(start, subnet)` of each address in a subnet, left to right.
    fn find_iter<'a>(&'a self, text: &'a [u8]) -> impl Iterator<Item = (usize, usize)> + 'a {
        let masks = url_masks(text);
        let masked = move |pos: usize| masks.iter().any(|&(start, end)| (start..end).contains(&pos));
        let mut pos = 0;
        std::iter::from_fn(move || {
            while pos < text.len() {
                if !text[pos].is_ascii_digit() || !left_boundary(TokenKind::Ipv4, text, pos) || masked(pos) {
                    pos += 1;
                    continue;
                }
                // The whole run of digits and dots: whatever starts inside
                // it is not at a token boundary, so the scan resumes after it.
                let start = pos;
                let run = text[start..].iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
                pos = start + run;
                let Some(end) = dotted_quad_end(&text[start..start + run]).map(|len| start + len) else { continue };
                if !right_boundary(TokenKind::Ipv4, text, end) {
                    continue;
                }
                let Some(address) = std::str::from_utf8(&text[start..end]).ok().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                if let Some(subnet) = self.subnets.iter().position(|s| s.contains(address)) {
                    return Some((start, subnet));
                }
            }
            None
        })
    }
}

/// The length of the four dot-separated groups of digits `run` starts
/// with, when it is exactly that (a trailing dot ends a sentence).
fn dotted_quad_end(run: &[u8]) -> Option<usize> {
    let trimmed = run.strip_suffix(b".").unwrap_or(run);
    let groups = trimmed.split(|&b| b == b'.').collect::<Vec<_>>();
    let ok = groups.len() == 4 && groups.iter().all(|g| (1..=3).contains(&g.len()));
    ok.then_some(trimmed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(subnets: &[&str], text: &str) -> Vec<(usize, usize, String)> {
        let matcher = SubnetMatcher::new(subnets).unwrap();
        matcher
            .find_lines(text.as_bytes())
            .into_iter()
            .map(|m| (m.line, m.column, matcher.subnets()[m.needle].clone()))
            .collect()
    }

    #[test]
    fn finds_addresses_inside_the_subnets_only() {
        let text = "DB=postgres://demo@10.77.1.12:5432/demo\nCACHE=10.77.2.5\nOTHER=10.78.1.1\nGW 10.77.1.1.\n";
        assert_eq!(
            found(&["10.77.1.0/24"], text),
            [(1, 20, "10.77.1.0/24".to_owned()), (4, 4, "10.77.1.0/24".to_owned())]
        );
        assert_eq!(found(&["10.77.0.0/16"], text).len(), 3);
        assert_eq!(found(&["10.78.1.1/32", "10.77.2.0/24"], text).len(), 2);
    }

    #[test]
    fn longer_tokens_are_not_addresses() {
        for text in ["10.77.1.12.5", "110.77.1.12", "v1.10.77.1.12", "10.77.1.1234", "10.77.1", "10.77.1.256"] {
            assert_eq!(found(&["10.77.1.0/24"], text), [], "{text}");
        }
        // ...but punctuation around an address is a boundary.
        for text in ["(10.77.1.12)", "x=10.77.1.12;", "[10.77.1.12]:80", "10.77.1.12/24", "a 10.77.1.12."] {
            assert_eq!(found(&["10.77.1.0/24"], text).len(), 1, "{text}");
        }
    }

    #[test]
    fn an_address_in_a_url_counts_only_as_its_host() {
        for text in [
            "http://10.77.1.12/proxy/10.77.1.13?via=10.77.1.14",
            "10.77.1.12:80/10.77.1.13",
            "ftp://10.77.1.13@10.77.1.12/",
        ] {
            assert_eq!(found(&["10.77.1.0/24"], text).len(), 1, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_subnet() {
        for bad in ["10.77.1.0", "10.77.1.0/33", "db/24", "10.77.1/24", ""] {
            assert!(matches!(SubnetMatcher::new([bad]), Err(MatcherError::InvalidSubnet { .. })), "{bad}");
        }
        assert!(matches!(SubnetMatcher::new(Vec::<String>::new()), Err(MatcherError::NoNeedles)));
        assert!(SubnetMatcher::new(["0.0.0.0/0"]).is_ok());
    }
}
