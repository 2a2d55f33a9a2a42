//! Host bindings for the `sluice:handler` world, generated once from `wit/`.
//! Exports are called asynchronously (a long call yields at every epoch
//! tick); imports are plain synchronous host functions.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    exports: { default: async },
});
