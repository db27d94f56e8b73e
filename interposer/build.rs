// Bind the shim's references to its own functions inside the shim: a wrapper's
// address must be the shim's even when another preloaded library exports the
// same name (otherwise the shim would hand out, and forward to, that one).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
}
