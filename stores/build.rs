//! `sqlx::migrate!` (src/postgres.rs) embeds the workspace's `migrations/` at compile time, and
//! cargo cannot see that: without this, an edited or added migration would not rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
