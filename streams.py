from h import *
from tradingboost.oms.v1 import market_data_pb2 as MD, order_pb2 as OR
import threading, time
got = {}
def watch(name, svc, rpc, **kw):
    got[name] = call(svc, rpc, 'bob', stream=True, timeout=4, **kw)
ths = [threading.Thread(target=watch, args=(n,s,r), kwargs=dict(user_id='bob')) for n,s,r in
       [('ou','O','StreamOrderUpdates'),('fi','O','StreamFills'),('po','P','StreamPositions'),('ts','T','StreamTrailingStopEvents'),('ru','O','StreamConditionalRules')]]
[t.start() for t in ths]; time.sleep(1)
print(call('M','PublishPrices','feed', prices=[MD.PriceTick(exchange='paper',symbol='BTC/USDT:USDT',price='49500')])[0])
print(call('O','PlaceOrder','alice', user_id='alice', exchange='paper', symbol='BTC/USDT:USDT', side=OR.SIDE_BUY, type=OR.ORDER_TYPE_MARKET, quantity='0.01', client_order_id='alice-live-1')[0])
print(call('M','PublishPrices','feed', prices=[MD.PriceTick(exchange='paper',symbol='BTC/USDT:USDT',price='48999')])[0])
[t.join() for t in ths]
for k,v in got.items(): print(k, v[0], [list(m.keys())[0] + ':' + str(m.get(list(m.keys())[0]).get('order',{}).get('userId', m.get(list(m.keys())[0]).get('userId',''))) for m in v[-1]])
# global price stream limit
res=[]
def ps(who):
    res.append((who, call('M','StreamPrices', who, stream=True, timeout=2, instruments=[MD.Instrument(exchange='paper',symbol='BTC/USDT:USDT')] if hasattr(MD,'Instrument') else [])[0:2]))
ts=[threading.Thread(target=ps, args=('bob',)) for _ in range(3)]
[t.start() for t in ts]; time.sleep(0.7); ps('alice'); [t.join() for t in ts]
for r in res: print(str(r)[:200])
