//! Seeded simulations and property tests of the judge's guarantees.
