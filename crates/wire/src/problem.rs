//! A validation problem with the path of the offending field, and a list of them.

use std::fmt;

/// One thing wrong with an input, located by a dotted path such as
/// `release[1].instance[0].addr`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one input; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub struct Problems {
    pub problems: Vec<Problem>,
}

impl Problems {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Problems {
        Problems {
            problems: vec![Problem::new(path, message)],
        }
    }

    /// `Ok(())` when `list` is empty, else the list as an error.
    pub fn check(list: Vec<Problem>) -> Result<(), Problems> {
        if list.is_empty() {
            Ok(())
        } else {
            Err(Problems { problems: list })
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{n} problem{}:", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}
