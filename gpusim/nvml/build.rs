// Monitoring clients load NVML by name as libnvidia-ml.so.1; give it that soname.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
}
