//! Type support handles for any installed interface, loaded at run time as rclpy and rosbag2 load
//! them: `dlopen` of `<prefix>/lib/lib<pkg>__rosidl_typesupport_c.so` (and of
//! `…__rosidl_typesupport_introspection_c.so`, whose message layout services need) and a call of
//! `rosidl_typesupport_c__get_message_type_support_handle__<pkg>__<ns>__<Type>` (services:
//! `…get_service_type_support_handle__…`). Libraries stay loaded for the life of the process (the
//! handles point into them), each loaded once.

use super::types::{Registry, TypeName};
use libloading::Library;
use r2r::{MessageTypeSupport, ServiceTypeSupport};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TypeSupportError {
    #[error("cannot load the type support library of {package} ({library}): {message}")]
    Library { package: String, library: String, message: String },
    #[error("{library} has no type support for {name} (no symbol {symbol})")]
    Symbol { name: String, library: String, symbol: String },
}

/// The two type support flavours rosa loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Flavour {
    C,
    Introspection,
}

impl Flavour {
    fn library_suffix(self) -> &'static str {
        match self {
            Flavour::C => "rosidl_typesupport_c",
            Flavour::Introspection => "rosidl_typesupport_introspection_c",
        }
    }
}

type Libraries = Mutex<HashMap<(String, Flavour), Arc<Library>>>;

fn libraries() -> &'static Libraries {
    static LIBS: OnceLock<Libraries> = OnceLock::new();
    LIBS.get_or_init(Libraries::default)
}

fn library(registry: &Registry, package: &str, flavour: Flavour) -> Result<Arc<Library>, TypeSupportError> {
    let key = (package.to_string(), flavour);
    let mut libs = libraries().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = libs.get(&key) {
        return Ok(l.clone());
    }
    let file = format!("lib{package}__{}.so", flavour.library_suffix());
    // The package's own prefix first (an overlay the user sourced), then the loader's search path.
    let mut candidates = Vec::new();
    if let Some(prefix) = registry.package_prefix(package) {
        candidates.push(prefix.join("lib").join(&file).into_os_string());
    }
    candidates.push(file.clone().into());
    let mut last = String::new();
    for c in candidates {
        // SAFETY: these are rosidl-generated type support libraries; their initialisers only
        // register type support structures.
        match unsafe { Library::new(&c) } {
            Ok(l) => {
                let l = Arc::new(l);
                libs.insert(key, l.clone());
                return Ok(l);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(TypeSupportError::Library { package: package.into(), library: file, message: last })
}

fn handle(registry: &Registry, name: &TypeName, flavour: Flavour, kind: &str) -> Result<*const c_void, TypeSupportError> {
    let lib = library(registry, &name.package, flavour)?;
    let symbol = format!("{}__get_{kind}_type_support_handle__{}", flavour.library_suffix(), name.symbol());
    let err = || TypeSupportError::Symbol {
        name: name.to_string(),
        library: format!("lib{}__{}.so", name.package, flavour.library_suffix()),
        symbol: symbol.clone(),
    };
    // SAFETY: rosidl declares these as `const rosidl_*_type_support_t * (void)`.
    let ptr = unsafe {
        let f = lib.get::<unsafe extern "C" fn() -> *const c_void>(symbol.as_bytes()).map_err(|_| err())?;
        f()
    };
    if ptr.is_null() {
        return Err(err());
    }
    Ok(ptr)
}

/// The message type support of `name` (`pkg/msg/T`, `pkg/srv/S_Request`, `pkg/action/A_FeedbackMessage`…).
pub fn message(registry: &Registry, name: &TypeName) -> Result<MessageTypeSupport, TypeSupportError> {
    let c = handle(registry, name, Flavour::C, "message")?;
    let introspection = handle(registry, name, Flavour::Introspection, "message")?;
    // SAFETY: both are the type support handles of `name`, from libraries that stay loaded.
    Ok(unsafe { MessageTypeSupport::new(c, introspection) })
}

/// The service type support of `name` (`pkg/srv/S`, `pkg/action/A_SendGoal`, `pkg/action/A_GetResult`).
pub fn service(registry: &Registry, name: &TypeName) -> Result<ServiceTypeSupport, TypeSupportError> {
    let s = handle(registry, name, Flavour::C, "service")?;
    let part = |suffix: &str| TypeName::new(&name.package, &name.namespace, &format!("{}_{suffix}", name.name));
    let request = message(registry, &part("Request"))?;
    let response = message(registry, &part("Response"))?;
    // SAFETY: as above.
    Ok(unsafe { ServiceTypeSupport::new(s, request, response) })
}
