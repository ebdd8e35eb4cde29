//! Property test: random trees, random edits and random version gaps (from nothing, from any older
//! release, from a damaged install); after an update the tree is byte-identical to the release.

use proptest::prelude::*;

use patch::{Client, ClientOptions, UpdateRequest};

use crate::support::*;

fn pick(rng: &mut fastrand::Rng, paths: &[String]) -> String {
    paths[rng.usize(..paths.len())].clone()
}

/// One random edit of a tree.
fn edit(rng: &mut fastrand::Rng, t: &mut Tree, n: &mut u64) {
    let paths: Vec<String> = t.keys().cloned().collect();
    *n += 1;
    match (rng.u8(..8), paths.is_empty()) {
        (_, true) | (0, _) => {
            let len = rng.usize(..250_000);
            t.insert(format!("d{}/f{n}.bin", rng.u8(..3)), text(rng.u64(..), len));
        }
        (1, _) => {
            let p = pick(rng, &paths);
            let f = t.get_mut(&p).unwrap();
            let at = rng.usize(..=f.len());
            let len = rng.usize(1..5000);
            f.splice(at..at, text(rng.u64(..), len));
        }
        (2, _) => {
            let f = t.get_mut(&pick(rng, &paths)).unwrap();
            let a = rng.usize(..=f.len());
            let b = (a + rng.usize(..20_000)).min(f.len());
            f.drain(a..b);
        }
        (3, _) => {
            // Move a range of bytes elsewhere in the file.
            let f = t.get_mut(&pick(rng, &paths)).unwrap();
            let a = rng.usize(..=f.len());
            let b = (a + rng.usize(..30_000)).min(f.len());
            let piece: Vec<u8> = f.drain(a..b).collect();
            let at = rng.usize(..=f.len());
            f.splice(at..at, piece);
        }
        (4, _) => {
            let p = pick(rng, &paths);
            let bytes = t.remove(&p).unwrap();
            t.insert(format!("renamed/{n}-{}", p.replace('/', "_")), bytes);
        }
        (5, _) => {
            let p = pick(rng, &paths);
            let bytes = t.remove(&p).unwrap();
            let at = rng.usize(..=bytes.len());
            t.insert(format!("{p}.a"), bytes[..at].to_vec());
            t.insert(format!("{p}.b"), bytes[at..].to_vec());
        }
        (6, _) if paths.len() >= 2 => {
            let a = t.remove(&paths[0]).unwrap();
            let b = t.remove(&paths[1]).unwrap();
            t.insert(format!("merged{n}"), [a, b].concat());
        }
        _ => {
            t.remove(&pick(rng, &paths));
        }
    }
}

fn damage(rng: &mut fastrand::Rng, tree_dir: &std::path::Path) {
    let files: Vec<String> = read_tree(tree_dir).keys().cloned().collect();
    for p in &files {
        if rng.bool() {
            continue;
        }
        let abs = tree_dir.join(p);
        let mut b = std::fs::read(&abs).unwrap();
        match rng.u8(..3) {
            0 if !b.is_empty() => {
                let i = rng.usize(..b.len());
                b[i] ^= 0xff;
            }
            1 => b.truncate(b.len() / 2),
            _ => {
                std::fs::remove_file(&abs).unwrap();
                continue;
            }
        }
        std::fs::write(&abs, b).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_install_updates_to_exactly_the_published_tree(
        seed in any::<u64>(),
        releases in 2usize..5,
        start in 0usize..5,
        damaged in any::<bool>(),
    ) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let fx = Fixture::new("patch-prop");
        let mut tree = Tree::new();
        let mut n = 0;
        for _ in 0..rng.usize(1..5) {
            edit(&mut rng, &mut tree, &mut n);
        }
        let mut published = Vec::new();
        for r in 0..releases {
            if r > 0 {
                for _ in 0..rng.usize(1..5) {
                    edit(&mut rng, &mut tree, &mut n);
                }
            }
            let b = fx.build_dir(&format!("b{r}"));
            write_tree(&b, &tree);
            fx.publish(&b, &format!("v{r}"));
            published.push(tree.clone());
        }
        let dir = fx.install("inst");
        let c = Client::new(&dir, fx.repo.dir.to_str().unwrap(), ClientOptions { concurrency: 3, ..Default::default() }).unwrap();
        let root = Some(fx.root_bytes());
        // start 0 = from nothing; k = installed release k first.
        let start = start.min(releases);
        if start > 0 {
            c.update(&UpdateRequest { release: Some(start as u64), root: root.clone(), ..Default::default() }).unwrap();
            prop_assert_eq!(&read_tree(&c.current()), &published[start - 1]);
            if damaged {
                damage(&mut rng, &c.current());
            }
        }
        c.update(&UpdateRequest { root, ..Default::default() }).unwrap();
        if start == releases && damaged {
            // Already on the latest release: verify --repair heals it.
            c.verify(true).unwrap();
        }
        prop_assert_eq!(&read_tree(&c.current()), published.last().unwrap());
        prop_assert!(c.verify(false).unwrap().damaged.is_empty());
    }
}
