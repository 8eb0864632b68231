#!/bin/sh
# The compiler launcher CMakeLists.txt sets when ccache is found: runs the
# compile it is given (ccache and the compiler's command line) unchanged,
# except that a precompiled header is deleted before it is built again.
# ccache would otherwise hash the old PCH into the new one's key, so the PCH
# never came from the cache; GCC's PCHs are not byte-reproducible, so then no
# object built with it did either, and adding one source file (which rewrites
# the target's flags and so rebuilds its PCH) recompiled everything.
out=
prev=
for arg in "$@"; do
  if [ "$prev" = "-o" ]; then
    out=$arg
  fi
  prev=$arg
done
case $out in
  *.gch) rm -f "$out" ;;
esac
exec "$@"
