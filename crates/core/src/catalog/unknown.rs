//! A model name that matched nothing: the error lists what is served and suggests the
//! nearest name, so a typo (`tiny-sdd`) is one glance from fixed.

use std::fmt;

/// Names listed in full before the rest are counted.
const LISTED: usize = 20;

/// The name as asked for, with every name that would have worked (local folders, aliases,
/// models an upstream serves). Shown with `{}`, it is the name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModel {
    pub name: String,
    pub available: Vec<String>,
}

impl UnknownModel {
    /// The served name nearest to the one asked for, if it is near enough to be a typo:
    /// the same but for case, or a few edits away (a third of the name, at least two).
    pub fn suggestion(&self) -> Option<&str> {
        let asked = self.name.to_lowercase();
        let budget = (asked.chars().count() / 3).max(2);
        self.available
            .iter()
            .map(|name| (edit_distance(&asked, &name.to_lowercase()), name))
            .filter(|(distance, _)| *distance <= budget)
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, name)| name.as_str())
    }

    /// What follows "not found": the served names and the suggestion.
    pub fn hint(&self) -> String {
        if self.available.is_empty() {
            return "no model is available (no model folder was found).".into();
        }
        let mut hint = format!(
            "available: {}",
            self.available
                .iter()
                .take(LISTED)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.available.len() > LISTED {
            hint.push_str(&format!(" and {} more", self.available.len() - LISTED));
        }
        match self.suggestion() {
            Some(near) => hint.push_str(&format!("; did you mean `{near}`?")),
            None => hint.push('.'),
        }
        hint
    }
}

impl fmt::Display for UnknownModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Levenshtein distance over characters (insertions, deletions, substitutions).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(name: &str, available: &[&str]) -> UnknownModel {
        UnknownModel {
            name: name.into(),
            available: available.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn typos_get_the_nearest_name_and_strangers_none() {
        let served = ["tiny-sd", "tiny-sdxl", "seedream-4-5-251128"];
        assert_eq!(unknown("tiny-sdd", &served).suggestion(), Some("tiny-sd"));
        assert_eq!(
            unknown("Tiny-SDXL", &served).suggestion(),
            Some("tiny-sdxl")
        );
        assert_eq!(
            unknown("seedream-4-5-251127", &served).suggestion(),
            Some("seedream-4-5-251128")
        );
        assert_eq!(unknown("nope", &served).suggestion(), None);
        assert_eq!(
            unknown("tiny-sdd", &served).hint(),
            "available: tiny-sd, tiny-sdxl, seedream-4-5-251128; did you mean `tiny-sd`?"
        );
        assert_eq!(
            unknown("nope", &served).hint(),
            "available: tiny-sd, tiny-sdxl, seedream-4-5-251128."
        );
        assert!(
            unknown("x", &[])
                .hint()
                .starts_with("no model is available")
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let many: Vec<String> = (0..25).map(|i| format!("model-{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let hint = unknown("zzz", &refs).hint();
        assert!(hint.ends_with("model-19 and 5 more."), "{hint}");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
