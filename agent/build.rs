//! Links the agent with `-Bsymbolic`, so references inside the library bind to its own
//! definitions and are never interposed by another object's symbols of the same name (glibc's
//! `__cyg_profile_func_enter/exit` stubs in particular).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rerun-if-changed=build.rs");
}
