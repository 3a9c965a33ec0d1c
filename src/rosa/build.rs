//! With the ROS 2 core from pip wheels, the `*_rosidl_generator_py` libraries that rcl pulls in
//! need libpython's symbols; `./rosa env` then names libpython's directory in `ROSA_PYTHON_LIBDIR`
//! and the node binaries link it. A regular ROS install needs nothing of this.
fn main() {
    println!("cargo:rerun-if-env-changed=ROSA_PYTHON_LIBDIR");
    println!("cargo:rerun-if-env-changed=ROSA_PYTHON_LIB");
    if let Ok(dir) = std::env::var("ROSA_PYTHON_LIBDIR") {
        if !dir.is_empty() {
            let lib = std::env::var("ROSA_PYTHON_LIB").unwrap_or_else(|_| "python3.11".into());
            println!("cargo:rustc-link-search=native={dir}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-l{lib},--as-needed");
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
