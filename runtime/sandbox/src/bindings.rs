//! Host bindings for the `sluice:handler` world, generated once from `wit/`.
//! Exports are called asynchronously (a long call yields at every epoch
//! tick); imports are async host functions, so a capability may wait on the
//! network under the call's budget.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "handler",
    imports: { default: async },
    exports: { default: async },
});
