//! `sqlx::migrate!` (src/store/postgres.rs) embeds migrations/ at compile time, and cargo cannot
//! see that: without this, an edited or added migration would not rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
