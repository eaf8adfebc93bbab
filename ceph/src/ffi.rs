//! The parts of librados' and librbd's C APIs Triad calls (Ceph 16, Debian 12's
//! librados-dev and librbd-dev). Declared by hand: each signature is copied from
//! `rados/librados.h` or `rbd/librbd.h`, and the structs match those headers field for field.

use std::ffi::{c_char, c_int, c_void};

pub type Rados = *mut c_void;
pub type IoCtx = *mut c_void;
pub type RbdImage = *mut c_void;
pub type Completion = *mut c_void;
pub type Callback = extern "C" fn(Completion, *mut c_void);
pub type DiffCallback = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

pub const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;

#[repr(C)]
#[derive(Debug)]
pub struct ClusterStat {
    pub kb: u64,
    pub kb_used: u64,
    pub kb_avail: u64,
    pub num_objects: u64,
}

#[repr(C)]
#[derive(Debug)]
pub struct ImageSpec {
    pub id: *mut c_char,
    pub name: *mut c_char,
}

#[repr(C)]
#[derive(Debug)]
pub struct SnapInfo {
    pub id: u64,
    pub size: u64,
    pub name: *const c_char,
}

#[repr(C)]
#[derive(Debug)]
pub struct ImageWatcher {
    pub addr: *mut c_char,
    pub id: i64,
    pub cookie: u64,
}

#[link(name = "rados")]
extern "C" {
    pub fn rados_create(cluster: *mut Rados, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: Rados, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: Rados, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: Rados) -> c_int;
    pub fn rados_shutdown(cluster: Rados);
    pub fn rados_get_instance_id(cluster: Rados) -> u64;
    pub fn rados_cluster_stat(cluster: Rados, result: *mut ClusterStat) -> c_int;
    pub fn rados_blocklist_add(cluster: Rados, addr: *mut c_char, expire_seconds: u32) -> c_int;
    pub fn rados_mon_command(
        cluster: Rados,
        cmd: *mut *const c_char,
        cmdlen: usize,
        inbuf: *const c_char,
        inbuflen: usize,
        outbuf: *mut *mut c_char,
        outbuflen: *mut usize,
        outs: *mut *mut c_char,
        outslen: *mut usize,
    ) -> c_int;
    pub fn rados_buffer_free(buf: *mut c_char);
    pub fn rados_ioctx_create(cluster: Rados, pool: *const c_char, ioctx: *mut IoCtx) -> c_int;
    pub fn rados_ioctx_destroy(ioctx: IoCtx);
}

#[link(name = "rbd")]
extern "C" {
    pub fn rbd_list2(io: IoCtx, images: *mut ImageSpec, max_images: *mut usize) -> c_int;
    pub fn rbd_image_spec_list_cleanup(images: *mut ImageSpec, num_images: usize);
    pub fn rbd_create2(
        io: IoCtx,
        name: *const c_char,
        size: u64,
        features: u64,
        order: *mut c_int,
    ) -> c_int;
    pub fn rbd_clone2(
        p_ioctx: IoCtx,
        p_name: *const c_char,
        p_snapname: *const c_char,
        c_ioctx: IoCtx,
        c_name: *const c_char,
        features: u64,
        c_order: *mut c_int,
        stripe_unit: u64,
        stripe_count: c_int,
    ) -> c_int;
    pub fn rbd_remove(io: IoCtx, name: *const c_char) -> c_int;
    pub fn rbd_rename(io: IoCtx, src: *const c_char, dst: *const c_char) -> c_int;

    pub fn rbd_open(
        io: IoCtx,
        name: *const c_char,
        image: *mut RbdImage,
        snap: *const c_char,
    ) -> c_int;
    pub fn rbd_open_read_only(
        io: IoCtx,
        name: *const c_char,
        image: *mut RbdImage,
        snap: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: RbdImage) -> c_int;
    pub fn rbd_get_size(image: RbdImage, size: *mut u64) -> c_int;
    pub fn rbd_resize(image: RbdImage, size: u64) -> c_int;
    pub fn rbd_get_create_timestamp(image: RbdImage, timestamp: *mut libc::timespec) -> c_int;
    pub fn rbd_flatten(image: RbdImage) -> c_int;
    pub fn rbd_lock_acquire(image: RbdImage, mode: c_int) -> c_int;
    pub fn rbd_lock_get_owners(
        image: RbdImage,
        mode: *mut c_int,
        owners: *mut *mut c_char,
        max_owners: *mut usize,
    ) -> c_int;
    pub fn rbd_lock_get_owners_cleanup(owners: *mut *mut c_char, count: usize);
    pub fn rbd_watchers_list(
        image: RbdImage,
        watchers: *mut ImageWatcher,
        max_watchers: *mut usize,
    ) -> c_int;
    pub fn rbd_watchers_list_cleanup(watchers: *mut ImageWatcher, count: usize);
    pub fn rbd_metadata_get(
        image: RbdImage,
        key: *const c_char,
        value: *mut c_char,
        len: *mut usize,
    ) -> c_int;
    pub fn rbd_metadata_set(image: RbdImage, key: *const c_char, value: *const c_char) -> c_int;
    pub fn rbd_diff_iterate2(
        image: RbdImage,
        from_snap: *const c_char,
        offset: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: DiffCallback,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rbd_write2(
        image: RbdImage,
        offset: u64,
        len: usize,
        buf: *const c_char,
        op_flags: c_int,
    ) -> isize;
    pub fn rbd_read(image: RbdImage, offset: u64, len: usize, buf: *mut c_char) -> isize;
    pub fn rbd_flush(image: RbdImage) -> c_int;

    pub fn rbd_snap_list(image: RbdImage, snaps: *mut SnapInfo, max_snaps: *mut c_int) -> c_int;
    pub fn rbd_snap_list_end(snaps: *mut SnapInfo);
    pub fn rbd_snap_create(image: RbdImage, name: *const c_char) -> c_int;
    pub fn rbd_snap_remove(image: RbdImage, name: *const c_char) -> c_int;
    pub fn rbd_snap_rollback(image: RbdImage, name: *const c_char) -> c_int;
    pub fn rbd_snap_protect(image: RbdImage, name: *const c_char) -> c_int;
    pub fn rbd_snap_unprotect(image: RbdImage, name: *const c_char) -> c_int;
    pub fn rbd_snap_is_protected(
        image: RbdImage,
        name: *const c_char,
        is_protected: *mut c_int,
    ) -> c_int;

    pub fn rbd_aio_create_completion(arg: *mut c_void, cb: Callback, c: *mut Completion) -> c_int;
    pub fn rbd_aio_get_return_value(c: Completion) -> isize;
    pub fn rbd_aio_release(c: Completion);
    pub fn rbd_aio_read(
        image: RbdImage,
        off: u64,
        len: usize,
        buf: *mut c_char,
        c: Completion,
    ) -> c_int;
    pub fn rbd_aio_write(
        image: RbdImage,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: Completion,
    ) -> c_int;
    pub fn rbd_aio_flush(image: RbdImage, c: Completion) -> c_int;
    pub fn rbd_aio_discard(image: RbdImage, off: u64, len: u64, c: Completion) -> c_int;
    pub fn rbd_aio_write_zeroes(
        image: RbdImage,
        off: u64,
        len: usize,
        c: Completion,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
}
