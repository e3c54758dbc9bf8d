# pgshield's launcher for Patroni: Patroni's own entry point, with one
# upstream fix applied first when Patroni is 3.0.2 (Debian 12's).
#
# patroni/patroni#2689 (released in 3.0.3): with etcd3, a leader whose
# lease ran out (its Patroni paused longer than ttl: a frozen process, a
# VM pause) creates a new lease and writes the leader key unconditionally,
# taking it back from the node promoted meanwhile; that node is then
# demoted and rewound, and the commits it acknowledged as primary are lost.
# The fix, as upstream has it: refresh the leader key only while it still
# names this node, else create it only if no one holds it, in one etcd
# transaction.
import sys
import time

import inspect

from patroni.version import __version__


def _version(v):
    try:
        return tuple(int(x) for x in v.split('.')[:3])
    except ValueError:
        return (0,)


if _version(__version__) < (3, 0, 3) and __version__ != '3.0.2':
    sys.exit('pgshield: Patroni %s lacks the fix of patroni/patroni#2689 and is not 3.0.2, '
             'which this launcher patches; install 3.0.2 or 3.0.3 and later' % __version__)

if __version__ == '3.0.2':
    from patroni.dcs import Leader, catch_return_false_exception
    from patroni.dcs import etcd3

    # The method as Debian's 3.0.2 has it (no leader argument; a decorator
    # hides the signature, so the source says): a package update that
    # changed it gets no patch meant for another shape.
    if '    def _update_leader(self):\n' not in inspect.getsource(etcd3):
        sys.exit('pgshield: Patroni 3.0.2 here is not the one this launcher patches (Etcd3._update_leader changed)')

    @catch_return_false_exception
    def _update_leader(self):
        retry = self._retry.copy()

        def _retry(*args, **kwargs):
            kwargs['retry'] = retry
            return retry(*args, **kwargs)

        self._run_and_handle_exceptions(self._do_refresh_lease, True, retry=_retry)

        if self._lease:
            cluster = self.cluster
            leader_lease = cluster and isinstance(cluster.leader, Leader) and cluster.leader.session
            if leader_lease != self._lease:
                retry.deadline = retry.stoptime - time.time()
                if retry.deadline < 1:
                    raise etcd3.Etcd3Error('update_leader timeout')
                fields = {'key': etcd3.base64_encode(self.leader_path),
                          'value': etcd3.base64_encode(self._name), 'lease': self._lease}
                put = {'request_put': fields}
                body = {'compare': [{'key': fields['key'], 'target': 'VALUE', 'value': fields['value']}],
                        'success': [put],
                        'failure': [{'request_txn': {
                            'compare': [{'key': fields['key'], 'target': 'CREATE', 'create_revision': '0'}],
                            'success': [put]}}]}
                ret = self._run_and_handle_exceptions(self._client.call_rpc, '/kv/txn', body, retry=_retry)
                if ret.get('succeeded'):
                    return True  # call_rpc has updated its cache
                if not ret.get('responses', [{}])[0].get('response_txn', {}).get('succeeded'):
                    return False  # another node holds the key: this one must not lead
                cache = getattr(self._client, '_kv_cache', None)
                if cache:
                    value = dict(fields)
                    value['mod_revision'] = ret['header']['revision']
                    cache.set(value)
                return True
        return bool(self._lease)

    etcd3.Etcd3._update_leader = _update_leader
    etcd3.Etcd3.pgshield_patched = True

if __name__ == '__main__':
    from patroni.__main__ import main
    sys.argv[0] = 'patroni'
    sys.exit(main())
